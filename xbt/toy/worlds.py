"""The toy worlds by name: each a scene generator and its shipped OLD/NEW pair of tiny CLIPs.

``get_world("shapes")`` is the original toy world (``xbt.toy``'s module-level functions are its
shortcuts). ``get_world("patterns")`` is different in kind (textured regions and counted items,
another caption grammar, a transformers ``CLIPModel`` as OLD and an open_clip ModifiedResNet as
NEW, 96-d -> 64-d), and it is the world where an upgrade *cannot* be backward compatible: its new
model does not carry what its old gallery separates (its ceiling is below old->old).
``get_world("patterns-wide")`` draws the same scenes with a realistic upgrade at a real CLIP's
scales (logit scale 100, 512-d OLD -> 768-d NEW; OLD's text tower is narrow and shallow). Its old
gallery leaves room in both directions: ceiling 78.5 / 27.8 against old->old 53.0 / 20.2 R@1 (I2T /
T2I), see BENCHMARKS.md. Defaults are chosen on shapes and patterns-wide.

``ADVISOR_WORLDS`` are built from those: the same scenes and OLD model, with a shipped NEW model weakened
by noise on its weights or narrowed to a random subspace (``models.VARIANT_KINDS``). Some can be upgraded
backward compatibly and some cannot; the upgrade advisor (``xbt.advise``) is calibrated and checked on them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

from ..core.errors import XBTError
from ..data.retrieval import RetrievalDataset, register_dataset
from . import patterns, shapes, splits

if TYPE_CHECKING:
    from ..models.encoders import CLIPEncoder


@dataclass(frozen=True)
class World:
    """A named toy world: its scene module and the names of its shipped OLD and NEW models."""

    name: str
    scenes: ModuleType
    old_model: str
    new_model: str

    def load_clips(self, device=None) -> tuple[CLIPEncoder, CLIPEncoder]:
        """The world's (old, new) CLIP pair, loaded offline from the package."""
        from . import models  # model code loads only when a world's models are asked for

        return models.load_model(self.old_model, device), models.load_model(self.new_model, device)

    def text_corpus(self, n: int = 50_000, seed: int = 0) -> list[str]:
        """``n`` captions of never-drawn scenes: the stage-1 corpus."""
        return splits.text_corpus(n, seed, self.scenes)

    def text_memory(self, n: int = 50_000, seed: int = 0) -> list[str]:
        """``text_corpus(n)`` less every caption of the test split: what ``fit`` may read as a caption memory
        (stage 2's pseudo-captions) when the test split measures it (toy captions repeat across splits)."""
        test = {c for caps in self.test_split()[1] for c in caps}
        return [t for t in self.text_corpus(n, seed) if t not in test]

    def pair_list(self, n: int = splits.MAX_PAIRS, seed: int = 0, captions_per_image: int = 1):
        """(PIL image, caption) rows of ``n`` pair images (1 or 5 captions each), disjoint from the test gallery."""
        return splits.pair_list(n, seed, self.scenes, captions_per_image)

    def pairs(self, n: int = splits.MAX_PAIRS, seed: int = 0, captions_per_image: int = 1):
        """The pair set as a ``datasets.Dataset`` (``image``, ``caption``), rows as ``pair_list``."""
        return splits.pairs(n, seed, self.scenes, captions_per_image)

    def test_split(self, n: int = splits.TEST_IMAGES, seed: int = 0):
        """The 1,000-image x 5-caption test gallery (images, captions per image)."""
        return splits.test_split(n, seed, self.scenes)

    def train_split(self, n: int, seed: int = 0):
        """``n`` images x 5 captions of the split the world's CLIPs were trained on."""
        return splits.train_split(n, seed, "train", self.scenes)

    def ceiling_split(self, n: int, seed: int = 0):
        """``n`` images x 5 captions that no model or adapter trains on: the ceiling map's supervision."""
        return splits.train_split(n, seed, "ceiling", self.scenes)

    def ceiling(self) -> dict[str, dict[int, float]] | None:
        """The world's recorded ceiling: direction -> K -> Recall@K in [0, 1] (``Report.set_ceiling`` reads it).

        The best Recall@K a query reaches through the frozen OLD gallery: a map on frozen NEW features trained
        with 20,000 images x 5 captions (``python -m scripts.benchmarks.ceiling``, which records it beside the
        weights). ``None`` where it was not measured.
        """
        from . import models

        path = models.WEIGHTS_DIR / "ceilings.json"
        recorded = json.loads(path.read_text()).get(self.name) if path.is_file() else None
        if recorded is None:
            return None
        return {d: {int(k): float(v) for k, v in ks.items()} for d, ks in recorded["test"].items()}

    def recorded_metrics(self) -> dict:
        """Test Recall@1 of the world's two models as their training script recorded it."""
        from . import models

        recorded = models.recorded_metrics()
        return {
            which: recorded[models.MODEL_NAMES[name]]
            for which, name in (("old", self.old_model), ("new", self.new_model))
        }


#: every toy world by name: the one registry (the demo, the benchmarks and ``load_dataset("toy", world=)`` read it)
WORLDS = {
    "shapes": World("shapes", shapes, "xbt-toy-old", "xbt-toy-new"),
    "patterns": World("patterns", patterns, "xbt-patterns-old", "xbt-patterns-new"),
    "patterns-wide": World("patterns-wide", patterns, "xbt-patterns-wide-old", "xbt-patterns-wide-new"),
}
#: the worlds built for the advisor: a shipped NEW model weakened (noise) or narrowed (a random subspace)
ADVISOR_WORLDS = {
    "shapes-noisy": World("shapes-noisy", shapes, "xbt-toy-old", "xbt-toy-new+noise0.3"),
    "shapes-broken": World("shapes-broken", shapes, "xbt-toy-old", "xbt-toy-new+noise0.6"),
    "shapes-narrow": World("shapes-narrow", shapes, "xbt-toy-old", "xbt-toy-new+rank32"),
    "patterns-wide-noisy": World(
        "patterns-wide-noisy", patterns, "xbt-patterns-wide-old", "xbt-patterns-wide-new+noise0.2"
    ),
    "patterns-wide-narrow": World(
        "patterns-wide-narrow", patterns, "xbt-patterns-wide-old", "xbt-patterns-wide-new+rank128"
    ),
}


def get_world(name: str) -> World:
    """The toy world called ``name`` (a key of ``WORLDS`` or ``ADVISOR_WORLDS``)."""
    if name not in WORLDS and name not in ADVISOR_WORLDS:
        raise XBTError(f"unknown toy world {name!r}; choose one of {sorted(WORLDS)} or {sorted(ADVISOR_WORLDS)}")
    return WORLDS.get(name) or ADVISOR_WORLDS[name]


def load_toy(split: str = "test", n: int | None = None, seed: int = 0, world: str = "shapes") -> RetrievalDataset:
    """A toy world's test gallery: ``n`` (default all 1,000) images with five captions each.

    ``world`` is ``"shapes"`` (the default toy world) or ``"patterns"``; the dataset is named
    ``"toy"`` for the shapes world and ``"toy-<world>"`` otherwise.
    """
    if split != "test":
        raise XBTError(f"the toy world has one evaluation split, 'test'; got split={split!r}")
    images, captions = splits.test_split(
        min(n or splits.TEST_IMAGES, splits.TEST_IMAGES), seed=seed, scenes=get_world(world).scenes
    )
    return RetrievalDataset(images, captions, "toy" if world == "shapes" else f"toy-{world}", "test", "toy")


register_dataset("toy", load_toy)

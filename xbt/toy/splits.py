"""A toy world's splits: the CLIP training set, the test gallery, the pair set and the text corpus.

Each function takes the world's scene module as ``scenes`` (anything with ``make_scene``,
``render`` and ``captions``: ``shapes`` or ``patterns``, the shapes world by default; the worlds by
name are ``xbt.toy.worlds.WORLDS``). Each split draws from its own seeded scene stream (the module's
``SPLIT_SEEDS``), so splits are disjoint and any prefix is stable: ``text_corpus(1000)`` is the
start of ``text_corpus(50000)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType

from PIL import Image

from . import shapes

TEST_IMAGES = 1000
MAX_PAIRS = 2000
CAPTIONS_PER_IMAGE = 5


def text_corpus(n: int = 50_000, seed: int = 0, scenes: ModuleType = shapes) -> list[str]:
    """``n`` captions of scenes that are never drawn: the text-only corpus of XBT stage 1.

    Caption ``i`` uses template ``i % 5`` of its own scene, so every template is represented. The scene
    grammar is small, so captions repeat: on the shapes world ``text_corpus(20000)`` holds 16,725 distinct
    captions and ``text_corpus(50000)`` 38,857 (patterns: 18,680 and 45,311). Stage 1 embeds each distinct
    caption once and says how many it read (``fit(..., verbose=True)``).
    """
    return list(iter_text_corpus(n, seed, scenes))


def iter_text_corpus(n: int = 50_000, seed: int = 0, scenes: ModuleType = shapes) -> Iterator[str]:
    """``text_corpus(n)`` as a lazy generator: the same captions in the same order, one at a time (no list)."""
    if n < 1:
        raise ValueError(f"text_corpus needs n >= 1, got {n}")
    for i in range(n):
        yield scenes.captions(scenes.make_scene("text", i, seed))[i % CAPTIONS_PER_IMAGE]


def pair_list(
    n: int = MAX_PAIRS, seed: int = 0, scenes: ModuleType = shapes, captions_per_image: int = 1
) -> list[tuple[Image.Image, str]]:
    """(PIL image, caption) rows of the pair split's first ``n`` images, disjoint from the test gallery.

    ``captions_per_image=1`` (the default): one row per image, image ``i`` with its caption
    ``i % 5`` (the pairs stage 2 trains on). ``captions_per_image=5``: five rows per image, all its
    captions, the image repeated (COCO's one-row-per-caption layout, shaped like the test gallery).
    """
    if not 1 <= n <= MAX_PAIRS:
        raise ValueError(f"the toy pair set holds 1..{MAX_PAIRS} pairs, asked for {n}")
    if captions_per_image not in (1, CAPTIONS_PER_IMAGE):
        raise ValueError(f"captions_per_image is 1 or {CAPTIONS_PER_IMAGE}, got {captions_per_image!r}")
    out = []
    for i in range(n):
        scene = scenes.make_scene("pairs", i, seed)
        image, caps = scenes.render(scene), scenes.captions(scene)
        out.extend((image, c) for c in ([caps[i % CAPTIONS_PER_IMAGE]] if captions_per_image == 1 else caps))
    return out


def pairs(n: int = MAX_PAIRS, seed: int = 0, scenes: ModuleType = shapes, captions_per_image: int = 1):
    """The pair set as a ``datasets.Dataset`` with an ``image`` (PIL) and a ``caption`` column
    (rows as ``pair_list``)."""
    import datasets

    items = pair_list(n, seed, scenes, captions_per_image)
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    return datasets.Dataset.from_dict(
        {"image": [im for im, _ in items], "caption": [c for _, c in items]}, features=features
    )


def test_split(
    n: int = TEST_IMAGES, seed: int = 0, scenes: ModuleType = shapes
) -> tuple[list[Image.Image], list[list[str]]]:
    """The test gallery: ``n`` images and, for image ``i``, its five captions ``captions[i]``."""
    if not 1 <= n <= TEST_IMAGES:
        raise ValueError(f"the toy test split holds 1..{TEST_IMAGES} images, asked for {n}")
    return train_split(n, seed, split="test", scenes=scenes)


def train_split(
    n: int, seed: int = 0, split: str = "train", scenes: ModuleType = shapes
) -> tuple[list[Image.Image], list[list[str]]]:
    """``n`` images with five captions each from ``split`` (``"train"`` trains the toy CLIPs
    themselves, ``"ceiling"`` feeds the benchmarks' supervised ceiling map)."""
    images, caps = [], []
    for i in range(n):
        scene = scenes.make_scene(split, i, seed)
        images.append(scenes.render(scene))
        caps.append(scenes.captions(scene, CAPTIONS_PER_IMAGE))
    return images, caps

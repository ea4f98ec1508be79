"""Every module path of xbt before its sub-packages, kept importable: ``from xbt.old_gallery import Gallery`` still
works.

Each old path is a small module whose attributes are looked up, in order, in the modules its
contents moved to (``MOVED``), with one ``DeprecationWarning`` per old path naming the new home;
names that were renamed are answered under their old name too (``RENAMED``). Importing ``xbt``
registers them all (nothing is imported until an attribute is read). The old paths that name a
function of the package root (``xbt.fit``, ``xbt.evaluate``) work in ``from xbt.fit import ...``
form only, as they always did. This is the top room: it may name every module, and nothing
imports it but the package root. It also resolves the root's own public names on first use
(``ROOT_NAMES``), the other place a module is named by a string.
"""

from __future__ import annotations

import importlib
import sys
import types
import warnings

#: old module path (under ``xbt.``) -> the modules its names now live in, the main one first
MOVED: dict[str, tuple[str, ...]] = {
    "errors": ("core.errors",),
    "io": ("core.files",),
    "distributed": ("core.distributed",),
    "stream": ("data.texts", "core.hashing", "core.names"),
    "pairs": ("data.pairs", "core.names"),
    "datasets": ("data.retrieval", "toy.worlds"),
    "sources": ("data.sources",),
    "encoders": ("models.encoders",),
    "lora": ("models.lora",),
    "embed": ("models.embedding", "core.checks", "core.hashing"),
    "shards": ("models.shards",),
    "export": ("serving.export",),
    "runtime": ("serving.runtime",),
    "adapter": ("adapters.adapter", "adapters.fusion", "adapters.registry"),
    "adapter_config": ("adapters.config",),
    "folder": ("adapters.folder",),
    "hub": ("adapters.hub",),
    "search": ("evaluation.search",),
    "evaluate": ("evaluation.evaluate",),
    "report": ("evaluation.report",),
    "maps": ("baselines.maps",),
    "fusion": ("baselines.alpha", "adapters.fusion", "adapters.config", "core.hashing"),
    "config": ("method.config", "baselines.config", "core.options"),
    "losses": ("method.losses",),
    "stage1": ("method.stage1", "models.head", "core.seeding"),
    "stage2": ("method.stage2", "method.image_path"),
    "distillation": ("method.heads",),
    "validation": ("method.guard",),
    "checkpoint": ("method.checkpoint",),
    "fit": ("method.fit", "baselines.fit"),
    "old_gallery": ("gallery.static", "core.hashing"),
    "store": ("vectordb.interface", "vectordb.faiss_index"),
    "gallery.store": ("vectordb.interface", "vectordb.faiss_index"),
    "gallery.qdrant": ("vectordb.qdrant",),
    "calibration": ("gallery.calibration", "gallery.calibration_fit"),
    "planner": ("gallery.planner",),
    "backfill": ("gallery.backfill",),
    "gallery_commands": ("cli.gallery", "gallery.pair_vectors", "data.sources"),
    "demo": ("toy.demo",),
    "toy.world": ("toy.shapes",),
    "toy.data": ("toy.splits", "toy.worlds"),
}
#: old path -> {old name: its name now}
RENAMED: dict[str, dict[str, str]] = {
    "stream": {"text_hashes": "text_keys", "TEXT_COLUMNS": "CAPTION_COLUMNS"},
    "gallery_commands": {"LazyImageFiles": "LazyImages"},
    "config": {"_opt": "option"},
}
#: old paths whose last name is a function of the package root, which must stay the function
_ROOT_FUNCTIONS = {"fit", "evaluate"}


class MovedModule(types.ModuleType):
    """A module that moved: attributes come from its new homes, with one ``DeprecationWarning``."""

    def __init__(self, old: str, targets: tuple[str, ...], renamed: dict[str, str]) -> None:
        super().__init__(f"xbt.{old}", f"Moved to {', '.join('xbt.' + t for t in targets)}.")
        self._targets, self._renamed, self._warned = targets, renamed, False

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        if name == "SCENES" and self.__name__ == "xbt.toy.data":  # the world registry that replaced it
            from ..toy.worlds import WORLDS

            value = {world.name: world.scenes for world in WORLDS.values()}
        else:
            value = self._lookup(self._renamed.get(name, name))
        if not self._warned:
            self._warned = True
            warnings.warn(
                f"{self.__name__} moved to {', '.join('xbt.' + t for t in self._targets)}; import from there "
                "(the old path keeps working)",
                DeprecationWarning,
                stacklevel=2,
            )
        return value

    def _lookup(self, name: str):
        for target in self._targets:
            module = importlib.import_module(f"xbt.{target}")
            if hasattr(module, name):
                return getattr(module, name)
        raise AttributeError(f"module {self.__name__!r} (moved to xbt.{self._targets[0]}) has no attribute {name!r}")

    def __dir__(self) -> list[str]:
        names: set[str] = set(self._renamed)
        for target in self._targets:
            names |= set(dir(importlib.import_module(f"xbt.{target}")))
        return sorted(names)


#: the package root's public names -> the module each lives in, imported on first use (``root_getattr``) so that
#: ``import xbt`` and ``xbt --help`` load no torch; ``xbt/__init__.pyi`` spells the same for type checkers
ROOT_NAMES: dict[str, str] = {
    "Adapter": "adapters.adapter",
    "AdapterConfig": "adapters.config",
    "ModelRef": "adapters.config",
    "FusionAdapter": "adapters.fusion",
    "load_adapter": "adapters.registry",
    "Advice": "advisor.advice",
    "advise": "advisor.advice",
    "BaselineConfig": "baselines.config",
    "fuse": "baselines.fit",
    "RetrievalDataset": "data.retrieval",
    "load_dataset": "data.retrieval",
    "evaluate": "evaluation.evaluate",
    "Report": "evaluation.report",
    "Stage1Config": "method.config",
    "Stage2Config": "method.config",
    "fit": "method.fit",
    "ForwardMap": "forward.map",
    "fit_forward": "forward.fit",
    "CLIPEncoder": "models.encoders",
    "load_clip": "models.encoders",
}


def root_getattr(name: str):
    """The package root's ``__getattr__`` (PEP 562): a public name or the ``toy`` package, imported now and kept
    as an attribute of ``xbt`` so the next read is a plain lookup."""
    if name == "toy":
        value = importlib.import_module("xbt.toy")
    elif name in ROOT_NAMES:
        value = getattr(importlib.import_module(f"xbt.{ROOT_NAMES[name]}"), name)
    else:
        raise AttributeError(f"module 'xbt' has no attribute {name!r}")
    setattr(sys.modules["xbt"], name, value)
    return value


def root_dir() -> list[str]:
    """``dir(xbt)``: what is loaded and every public name, loaded or not."""
    return sorted(set(vars(sys.modules["xbt"])) | set(ROOT_NAMES) | {"toy"})


def install() -> None:
    """Register every old path in ``sys.modules`` (and as an attribute of its parent package)."""
    for old, targets in MOVED.items():
        name = f"xbt.{old}"
        if name in sys.modules:
            continue
        module = MovedModule(old, targets, RENAMED.get(old, {}))
        sys.modules[name] = module
        parent_name, _, leaf = name.rpartition(".")
        # an attribute of its parent where that is loaded (the root; xbt.toy.world waits for an import
        # statement, which finds it in sys.modules): importing the toy world here would load torch with xbt
        if old not in _ROOT_FUNCTIONS and parent_name in sys.modules:
            setattr(sys.modules[parent_name], leaf, module)


install()

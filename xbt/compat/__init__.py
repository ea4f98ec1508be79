"""Every module path of xbt before its sub-packages, kept importable: ``from xbt.old_gallery import Gallery`` still
works.

Each old path is a small module whose attributes are looked up, in order, in the modules its
contents moved to (``MOVED``), with one ``DeprecationWarning`` per old path naming the new home;
names that were renamed are answered under their old name too (``RENAMED``). Importing ``xbt``
registers them all (nothing is imported until an attribute is read). The old paths that name a
function of the package root (``xbt.fit``, ``xbt.evaluate``) work in ``from xbt.fit import ...``
form only, as they always did. This is the top room: it may name every module, and nothing
imports it but the package root.
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
    "store": ("gallery.store",),
    "vectordb": ("gallery.qdrant",),
    "calibration": ("gallery.calibration",),
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


def install() -> None:
    """Register every old path in ``sys.modules`` (and as an attribute of its parent package)."""
    for old, targets in MOVED.items():
        name = f"xbt.{old}"
        if name in sys.modules:
            continue
        module = MovedModule(old, targets, RENAMED.get(old, {}))
        sys.modules[name] = module
        parent_name, _, leaf = name.rpartition(".")
        if old not in _ROOT_FUNCTIONS:
            setattr(importlib.import_module(parent_name), leaf, module)


install()

"""The offline toy world: procedural captioned images and a shipped OLD/NEW pair of tiny CLIPs.

``load_clips()`` gives the two models (``load_model(name)`` one of them, ``MODEL_NAMES`` their
names); ``text_corpus``, ``pairs`` and ``test_split`` give the stage-1 corpus, the stage-2 pair set
and the evaluation gallery of the shapes world; ``get_world("patterns")`` gives the second world
with the same methods. The model names load lazily, so code that only needs the data
(``xbt.toy.data``) never imports model code.
"""

from .data import iter_text_corpus, pair_list, pairs, test_split, text_corpus, train_split

_MODEL_ATTRS = ("load_clips", "load_model", "MODEL_NAMES", "WEIGHTS_DIR", "recorded_metrics")
_WORLD_ATTRS = ("get_world", "WORLDS", "World")

__all__ = [*_MODEL_ATTRS, *_WORLD_ATTRS, "text_corpus", "iter_text_corpus", "pairs", "pair_list", "test_split", "train_split"]


def __getattr__(name: str):
    if name in _MODEL_ATTRS:
        from . import models

        return getattr(models, name)
    if name in _WORLD_ATTRS:
        from . import worlds

        return getattr(worlds, name)
    raise AttributeError(f"module 'xbt.toy' has no attribute {name!r}")

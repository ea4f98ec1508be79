"""The offline toy worlds: procedural captioned images and shipped OLD/NEW pairs of tiny CLIPs.

``load_clips()`` gives the shapes world's two models (``load_model(name)`` one of them,
``MODEL_NAMES`` their names); ``text_corpus``, ``pairs`` and ``test_split`` give the stage-1
corpus, the stage-2 pair set and the evaluation gallery of the shapes world; ``get_world("patterns")``
gives the second world with the same methods. Importing this package registers the ``"toy"``
evaluation dataset and loads no model code: the model names load lazily.

It may import every lower layer; nothing below it imports it.
"""

from .splits import iter_text_corpus, pair_list, pairs, test_split, text_corpus, train_split
from .worlds import WORLDS, World, get_world, load_toy

_MODEL_ATTRS = ("load_clips", "load_model", "MODEL_NAMES", "WEIGHTS_DIR", "recorded_metrics")

__all__ = [
    *_MODEL_ATTRS,
    "WORLDS",
    "World",
    "get_world",
    "iter_text_corpus",
    "load_toy",
    "pair_list",
    "pairs",
    "test_split",
    "text_corpus",
    "train_split",
]


def __getattr__(name: str):
    if name in _MODEL_ATTRS:
        from . import models

        return getattr(models, name)
    raise AttributeError(f"module 'xbt.toy' has no attribute {name!r}")

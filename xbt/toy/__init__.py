"""The offline toy world: procedural captioned images and a shipped OLD/NEW pair of tiny CLIPs.

``load_clips()`` gives the two models; ``text_corpus``, ``pairs`` and ``test_split`` give the
stage-1 corpus, the stage-2 pair set and the evaluation gallery.
"""

from .data import pair_list, pairs, test_split, text_corpus, train_split
from .models import WEIGHTS_DIR, load_clips, recorded_metrics

__all__ = [
    "load_clips", "recorded_metrics", "WEIGHTS_DIR", "text_corpus", "pairs", "pair_list",
    "test_split", "train_split",
]

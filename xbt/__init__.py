"""xbt: upgrade a CLIP model without re-embedding the gallery (cross-modal backward-compatible training).

Public API::

    old, new = xbt.load_clip(...), xbt.load_clip(...)
    adapter = xbt.fit(old, new, texts)              # stage 1: text-only projection
    adapter.encode_text([...]); adapter.encode_image([...])   # [n, d_old], unit norm
    adapter.save_pretrained(dir); xbt.Adapter.from_pretrained(dir, new=new)
    report = xbt.evaluate(old, adapter, dataset="flickr30k")   # Recall@K, flips, verdict
"""

__version__ = "0.1.0"

from .adapter import Adapter
from .datasets import RetrievalDataset, load_dataset
from .encoders import CLIPEncoder, load_clip
from .errors import XBTError
from .evaluate import Report, evaluate  # the function shadows the submodule name: use xbt.evaluate(...)
from .fit import fit
from . import toy  # noqa: E402  the offline toy world: xbt.toy.load_clips(), text_corpus(), pairs()

__all__ = [
    "Adapter", "CLIPEncoder", "Report", "RetrievalDataset", "XBTError", "evaluate", "fit", "load_clip",
    "load_dataset", "toy", "__version__",
]

"""xbt: upgrade a CLIP model without re-embedding the gallery (cross-modal backward-compatible training).

Public API::

    old, new = xbt.load_clip(...), xbt.load_clip(...)
    adapter = xbt.fit(old, new, texts)              # stage 1: text-only projection
    adapter.encode_text([...]); adapter.encode_image([...])   # [n, d_old], unit norm
    adapter.save_pretrained(dir); xbt.load_adapter(dir, new=new)
    report = xbt.evaluate(old, adapter, dataset="flickr30k")   # Recall@K, flips, verdict

This module only re-exports; each name lives in the module ARCHITECTURE.md describes.
"""

from . import toy  # the offline toy world: xbt.toy.load_clips(), text_corpus(), pairs()
from .adapter import Adapter, FusionAdapter, load_adapter
from .adapter_config import AdapterConfig, ModelRef
from .config import BaselineConfig, Stage1Config, Stage2Config
from .datasets import RetrievalDataset, load_dataset
from .encoders import CLIPEncoder, load_clip
from .errors import XBTError
from .evaluate import evaluate  # the function shadows the submodule name: use xbt.evaluate(...)
from .fit import fit, fuse  # likewise xbt.fit; `from xbt.fit import ...` still reaches the module
from .report import Report
from .version import __version__

__all__ = [
    "Adapter", "AdapterConfig", "BaselineConfig", "CLIPEncoder", "FusionAdapter", "ModelRef", "Report", "RetrievalDataset",
    "Stage1Config", "Stage2Config", "XBTError", "__version__", "evaluate", "fit", "fuse", "load_adapter", "load_clip", "load_dataset",
    "toy",
]

"""xbt: upgrade a CLIP model without re-embedding the gallery (cross-modal backward-compatible training).

Public API::

    old, new = xbt.load_clip(...), xbt.load_clip(...)
    adapter = xbt.fit(old, new, texts)              # stage 1: text-only projection
    adapter.encode_text([...]); adapter.encode_image([...])   # [n, d_old], unit norm
    adapter.save_pretrained(dir); xbt.load_adapter(dir, new=new)
    report = xbt.evaluate(old, adapter, dataset="flickr30k")   # Recall@K, flips, verdict

This module only re-exports; each name lives in the module ARCHITECTURE.md describes.
"""

from . import compat as compat  # every module path before the sub-packages (xbt.old_gallery, ...) keeps importing
from . import toy  # the offline toy world: xbt.toy.load_clips(), text_corpus(), pairs()
from .adapters.adapter import Adapter
from .adapters.config import AdapterConfig, ModelRef
from .adapters.fusion import FusionAdapter
from .adapters.registry import load_adapter
from .baselines.config import BaselineConfig
from .baselines.fit import fuse
from .core.errors import XBTError
from .data.retrieval import RetrievalDataset, load_dataset
from .evaluation.evaluate import evaluate
from .evaluation.report import Report
from .method.config import Stage1Config, Stage2Config
from .method.fit import fit
from .models.encoders import CLIPEncoder, load_clip
from .version import __version__

__all__ = [
    "Adapter",
    "AdapterConfig",
    "BaselineConfig",
    "CLIPEncoder",
    "FusionAdapter",
    "ModelRef",
    "Report",
    "RetrievalDataset",
    "Stage1Config",
    "Stage2Config",
    "XBTError",
    "__version__",
    "evaluate",
    "fit",
    "fuse",
    "load_adapter",
    "load_clip",
    "load_dataset",
    "toy",
]

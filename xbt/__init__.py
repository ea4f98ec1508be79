"""xbt: upgrade a CLIP model without re-embedding the gallery (cross-modal backward-compatible training).

Public API::

    old, new = xbt.load_clip(...), xbt.load_clip(...)
    print(xbt.advise(old, new, texts).summary())    # will an adapter be backward compatible? (texts alone)
    adapter = xbt.fit(old, new, texts)              # stage 1: text-only projection
    adapter.encode_text([...]); adapter.encode_image([...])   # [n, d_old], unit norm
    adapter.save_pretrained(dir); xbt.load_adapter(dir, new=new)
    report = xbt.evaluate(old, adapter, dataset="flickr30k")   # Recall@K, flips, verdict

This module only re-exports, lazily; each name lives in the module ARCHITECTURE.md describes.
"""

from . import compat as compat  # every module path before the sub-packages (xbt.old_gallery, ...) keeps importing
from .compat import root_dir as __dir__  # noqa: F401 (PEP 562: dir(xbt) lists the names not loaded yet)
from .compat import root_getattr as __getattr__  # noqa: F401 (PEP 562: each public name imports on first use)
from .core.errors import XBTError
from .version import __version__

__all__ = [
    "Adapter",
    "AdapterConfig",
    "Advice",
    "BaselineConfig",
    "CLIPEncoder",
    "ForwardMap",
    "FusionAdapter",
    "ModelRef",
    "Report",
    "RetrievalDataset",
    "Stage1Config",
    "Stage2Config",
    "XBTError",
    "__version__",
    "advise",
    "evaluate",
    "fit",
    "fit_forward",
    "fuse",
    "load_adapter",
    "load_clip",
    "load_dataset",
    "toy",
]

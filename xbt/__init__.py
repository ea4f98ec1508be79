"""xbt: upgrade a CLIP model without re-embedding the gallery (cross-modal backward-compatible training).

Public API::

    old, new = xbt.load_clip(...), xbt.load_clip(...)
    adapter = xbt.fit(old, new, texts)              # stage 1: text-only projection
    adapter.encode_text([...]); adapter.encode_image([...])   # [n, d_old], unit norm
    adapter.save_pretrained(dir); xbt.Adapter.from_pretrained(dir, new=new)
"""

__version__ = "0.1.0"

from .adapter import Adapter
from .encoders import CLIPEncoder, load_clip
from .errors import XBTError
from .fit import fit

__all__ = ["Adapter", "CLIPEncoder", "XBTError", "fit", "load_clip", "__version__"]

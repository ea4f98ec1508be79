"""The shipped toy CLIPs, trained by scripts/assets/train_toy_clips.py: each world's OLD and NEW model.

Most are open_clip ``local-dir`` folders; the patterns world's OLD model is a transformers
``CLIPModel`` folder (``config.json``), loaded through ``hf:<folder>`` as any Hub CLIP would be.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..core.errors import XBTError
from ..models.encoders import CLIPEncoder, load_clip

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
#: the toy models by name -> their folder under ``WEIGHTS_DIR``
MODEL_NAMES = {
    "xbt-toy-old": "toy-old",
    "xbt-toy-new": "toy-new",
    "xbt-patterns-old": "patterns-old",
    "xbt-patterns-new": "patterns-new",
    "xbt-patterns-wide-old": "patterns-wide-old",
    "xbt-patterns-wide-new": "patterns-wide-new",
}


def load_model(name: str, device=None) -> CLIPEncoder:
    """One shipped toy CLIP by name (a key of ``MODEL_NAMES``) as a ``CLIPEncoder``.

    The encoder's ``name`` and ``source`` are the toy name, so adapters record it and the CLI can
    load it again.
    """
    if name not in MODEL_NAMES:
        raise XBTError(f"unknown toy model {name!r}; choose one of {sorted(MODEL_NAMES)}")
    folder = WEIGHTS_DIR / MODEL_NAMES[name]
    if (folder / "config.json").is_file():
        encoder = load_clip(f"hf:{folder}", device=device)
    elif (folder / "open_clip_model.safetensors").is_file():
        encoder = load_clip(f"local-dir:{folder}", device=device)
    else:
        raise XBTError(
            f"toy CLIP weights for {name} are missing from {folder}; regenerate them with `python -m "
            "scripts.assets.train_toy_clips`"
        )
    encoder.name = encoder.source = name
    return encoder


def load_clips(device=None) -> tuple[CLIPEncoder, CLIPEncoder]:
    """The toy world's (old, new) CLIP pair as ``CLIPEncoder`` objects, loaded offline.

    OLD: 64-d embedding, 32-pixel input, briefly trained. NEW: 96-d, 48-pixel input, larger and
    trained longer. Both are open_clip models stored as ``local-dir`` folders in the package.
    """
    return load_model("xbt-toy-old", device), load_model("xbt-toy-new", device)


def recorded_metrics() -> dict:
    """Test Recall@1 of each shipped toy model as recorded by the training script."""
    return json.loads((WEIGHTS_DIR / "metrics.json").read_text())

"""The shipped toy CLIPs: an OLD and a NEW open_clip model trained by scripts/train_toy_clips.py."""

from __future__ import annotations

import json
from pathlib import Path

from ..encoders import CLIPEncoder, load_clip
from ..errors import XBTError

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
#: the toy models by name -> their ``local-dir`` folder under ``WEIGHTS_DIR``
MODEL_NAMES = {"xbt-toy-old": "toy-old", "xbt-toy-new": "toy-new"}


def load_model(name: str, device=None) -> CLIPEncoder:
    """One shipped toy CLIP by name (``"xbt-toy-old"`` or ``"xbt-toy-new"``) as a ``CLIPEncoder``.

    The encoder's ``name`` and ``source`` are the toy name, so adapters record it and the CLI can
    load it again.
    """
    if name not in MODEL_NAMES:
        raise XBTError(f"unknown toy model {name!r}; choose one of {sorted(MODEL_NAMES)}")
    folder = WEIGHTS_DIR / MODEL_NAMES[name]
    if not (folder / "open_clip_model.safetensors").is_file():
        raise XBTError(
            f"toy CLIP weights for {name} are missing from {folder}; regenerate them with `python scripts/train_toy_clips.py`"
        )
    encoder = load_clip(f"local-dir:{folder}", device=device)
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

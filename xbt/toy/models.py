"""The shipped toy CLIPs: an OLD and a NEW open_clip model trained by scripts/train_toy_clips.py."""

from __future__ import annotations

import json
from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def load_clips(device=None):
    """The toy world's (old, new) CLIP pair as ``CLIPEncoder`` objects, loaded offline.

    OLD: 64-d embedding, 32-pixel input, briefly trained. NEW: 96-d, 48-pixel input, larger and
    trained longer. Both are open_clip models stored as ``local-dir`` folders in the package.
    """
    from ..encoders import load_clip

    missing = [p for p in ("toy-old", "toy-new") if not (WEIGHTS_DIR / p / "open_clip_model.safetensors").is_file()]
    if missing:
        from ..errors import XBTError

        raise XBTError(
            f"toy CLIP weights {missing} are missing from {WEIGHTS_DIR}; "
            "regenerate them with `python scripts/train_toy_clips.py`"
        )
    return load_clip("xbt-toy-old", device=device), load_clip("xbt-toy-new", device=device)


def recorded_metrics() -> dict:
    """Test Recall@1 of each shipped toy model as recorded by the training script."""
    return json.loads((WEIGHTS_DIR / "metrics.json").read_text())

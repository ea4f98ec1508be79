"""The shipped toy CLIPs, trained by scripts/assets/train_toy_clips.py: each world's OLD and NEW model.

Most are open_clip ``local-dir`` folders; the patterns world's OLD model is a transformers
``CLIPModel`` folder (``config.json``), loaded through ``hf:<folder>`` as any Hub CLIP would be.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

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


#: built variants of a shipped model, ``"<toy name>+<kind><amount>"``: ``noise0.3`` adds Gaussian noise of 0.3
#: times each weight matrix's own spread to every weight matrix (a weaker model); ``rank8`` keeps an 8-d random
#: subspace of both towers' embeddings (a model that cannot tell apart what the rest of the space held). Both are
#: seeded, so a variant is the same model on every load; the upgrade advisor is calibrated on worlds built with them.
VARIANT_KINDS = ("noise", "rank")


def load_model(name: str, device=None) -> CLIPEncoder:
    """One shipped toy CLIP by name (a key of ``MODEL_NAMES``, or a variant of one) as a ``CLIPEncoder``.

    The encoder's ``name`` and ``source`` are the toy name, so adapters record it and the CLI can
    load it again.
    """
    base, _, variant = name.partition("+")
    if base not in MODEL_NAMES:
        raise XBTError(f"unknown toy model {name!r}; choose one of {sorted(MODEL_NAMES)}")
    folder = WEIGHTS_DIR / MODEL_NAMES[base]
    if (folder / "config.json").is_file():
        encoder = load_clip(f"hf:{folder}", device=device)
    elif (folder / "open_clip_model.safetensors").is_file():
        encoder = load_clip(f"local-dir:{folder}", device=device)
    else:
        raise XBTError(
            f"toy CLIP weights for {name} are missing from {folder}; regenerate them with `python -m "
            "scripts.assets.train_toy_clips`"
        )
    if variant:
        apply_variant(encoder, variant)
    encoder.name = encoder.source = name
    return encoder


def apply_variant(encoder: CLIPEncoder, variant: str, seed: int = 0) -> None:
    """Change an open_clip encoder's weights in place as ``variant`` (``VARIANT_KINDS``) says; see its comment."""
    kind = next((k for k in VARIANT_KINDS if variant.startswith(k)), None)
    try:
        amount = float(variant[len(kind) :]) if kind else None
    except ValueError:
        amount = None
    if kind is None or amount is None or amount <= 0:
        raise XBTError(f"unknown model variant {variant!r}; use noise<float> or rank<int>, e.g. noise0.3 or rank8")
    model, gen = encoder.model, torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if kind == "noise":
            for p in model.parameters():
                if p.ndim >= 2:
                    p.add_(amount * p.std() * torch.randn(p.shape, generator=gen))
        else:
            d = encoder.embed_dim
            if not hasattr(model, "text_projection") or int(amount) >= d:
                raise XBTError(f"variant {variant!r} needs an open_clip model embedding in more than {int(amount)}-d")
            basis = torch.linalg.qr(torch.randn(d, int(amount), generator=gen))[0]
            keep = basis @ basis.T  # [d, d] the projector onto the kept subspace
            model.text_projection.copy_(model.text_projection @ keep)
            if getattr(model.visual, "proj", None) is not None:
                model.visual.proj.copy_(model.visual.proj @ keep)
            else:  # ModifiedResNet: out = W x + b
                c_proj = model.visual.attnpool.c_proj
                c_proj.weight.copy_(keep @ c_proj.weight)
                c_proj.bias.copy_(keep @ c_proj.bias)
    encoder.refresh_fingerprint()


def load_clips(device=None) -> tuple[CLIPEncoder, CLIPEncoder]:
    """The toy world's (old, new) CLIP pair as ``CLIPEncoder`` objects, loaded offline.

    OLD: 64-d embedding, 32-pixel input, briefly trained. NEW: 96-d, 48-pixel input, larger and
    trained longer. Both are open_clip models stored as ``local-dir`` folders in the package.
    """
    return load_model("xbt-toy-old", device), load_model("xbt-toy-new", device)


def recorded_metrics() -> dict:
    """Test Recall@1 of each shipped toy model as recorded by the training script."""
    return json.loads((WEIGHTS_DIR / "metrics.json").read_text())

"""PEFT LoRA on a copy of the NEW model: choose the target layers, inject, merge for serving, save, load.

The user's model object and its base weights are never touched: ``add_lora`` deep-copies the
model and injects LoRA layers into the copy. Which layers, per tower (``lora_targets``):

- transformer blocks (open_clip ViT and text towers, transformers CLIP): the attention and MLP
  layers of every block;
- open_clip's ``ModifiedResNet`` image tower: the three convolutions of every bottleneck (PEFT wraps
  ``Conv2d`` as well as ``Linear``; the attention pool reads its projection weights directly, past any wrapper);
- any other tower (a timm trunk, say): every ``Linear`` and ``Conv2d`` inside it.

``target_modules`` narrows the choice to layer names ending in the given suffixes. A tower that was
asked for and has no target layer is an error, never a silent no-op. The copy is a ``CLIPEncoder``
whose ``peft_model`` attribute is the ``peft.PeftModel``. On disk the LoRA weights are PEFT's own
folder (``adapter_config.json`` + ``adapter_model.safetensors``); loading reads the safetensors file
only.
"""

from __future__ import annotations

import copy
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from ..core.errors import XBTError
from .encoders import CLIPEncoder

#: PEFT's weights file inside a LoRA folder (never its pickled ``adapter_model.bin``)
LORA_WEIGHTS = "adapter_model.safetensors"


#: where each tower's layers live, by backend: a module-name prefix
TOWER_PREFIXES = {
    "open_clip": {"image": "visual.", "text": "transformer."},
    "transformers": {"image": "vision_model.", "text": "text_model."},
}
#: the layers LoRA wraps in known tower families: a regex on the name below the tower prefix
_FAMILY_LAYERS = (
    # transformer blocks: open_clip ViT / text (resblocks), transformers CLIP (encoder.layers)
    r"(transformer\.)?resblocks\.\d+\.(attn|mlp\.c_fc|mlp\.c_proj)",
    r"encoder\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|out_proj)|mlp\.fc1|mlp\.fc2)",
    # open_clip ModifiedResNet: bottleneck convolutions (its attention pool hands the q/k/v/c weights straight to
    # F.multi_head_attention_forward, so LoRA wrapped around those layers would never run: not targeted)
    r"layer\d+\.\d+\.conv[123]",
)


def lora_targets(encoder: CLIPEncoder, towers: Sequence[str], suffixes: Sequence[str] | None = None) -> list[str]:
    """The full names of the modules LoRA wraps in ``towers`` of ``encoder.model`` (sorted).

    Known tower families get their attention/MLP (or bottleneck-convolution) layers; an unknown
    tower gets every ``Linear`` and ``Conv2d`` in it. ``suffixes`` keeps only names ending in one of
    them. Raises ``XBTError`` naming the tower when one asked for has no target layer.
    """
    prefixes = TOWER_PREFIXES[encoder.backend]
    modules = dict(encoder.model.named_modules())
    family = re.compile("|".join(f"(?:{p})" for p in _FAMILY_LAYERS))
    chosen: list[str] = []
    for tower in towers:
        prefix = prefixes[tower]
        inside = {name[len(prefix) :]: m for name, m in modules.items() if name.startswith(prefix)}
        if encoder.backend == "open_clip" and tower == "text":
            inside = {n: m for n, m in inside.items() if not n.startswith("visual.")}
        names = [n for n in inside if family.fullmatch(n)]
        if not names:  # an unknown family: every linear and convolutional layer of the tower
            names = [n for n, m in inside.items() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
        if suffixes:
            names = [n for n in names if any(n == s or n.endswith("." + s) for s in suffixes)]
        if not names:
            raise XBTError(
                f"no LoRA target layer found in the {tower} tower of {encoder.name}"
                + (f" among names ending in {list(suffixes)}" if suffixes else "")
                + "; pass target_modules=... naming layers of that tower (see model.named_modules())"
            )
        chosen += [prefix + n for n in names]
    return sorted(chosen)


def add_lora(
    encoder: CLIPEncoder,
    rank: int,
    lora_alpha: float,
    dropout: float = 0.0,
    target_modules: Sequence[str] | None = None,
    towers: Sequence[str] = ("image",),
) -> CLIPEncoder:
    """A new ``CLIPEncoder`` over a deep copy of ``encoder.model`` with LoRA layers in ``towers``.

    ``rank``, ``lora_alpha`` and ``dropout`` are PEFT's ``LoraConfig`` ``r``, ``lora_alpha`` and
    ``lora_dropout``; ``target_modules`` overrides the layers ``lora_targets`` finds. The copy is a
    ``peft.PeftModel``; only LoRA weights require grad. ``encoder`` is unchanged. PEFT initialises
    the LoRA weights from torch's global RNG (seed it around this call).
    """
    from peft import LoraConfig, get_peft_model

    targets = lora_targets(encoder, towers, target_modules)
    lora_cfg = LoraConfig(r=rank, lora_alpha=lora_alpha, lora_dropout=dropout, target_modules=targets)
    model = copy.deepcopy(encoder.model)
    try:
        peft_model = get_peft_model(model, lora_cfg)
    except ValueError as exc:
        raise XBTError(
            f"PEFT cannot wrap the target layers of {encoder.name} ({exc}); pass target_modules=... naming other "
            "layers"
        ) from exc
    return wrap_peft(encoder, peft_model)


def frozen_train_mode(encoder: CLIPEncoder) -> None:
    """Put a LoRA encoder in training mode for LoRA only: the base model stays in eval mode.

    Batch-norm layers (ResNet towers) would otherwise update their running statistics, which are
    base weights: they are not saved with the LoRA weights, so a reloaded adapter would differ from
    the trained one. Only LoRA's own dropout layers train.
    """
    encoder.model.eval()
    for name, module in encoder.model.named_modules():
        if "lora_dropout" in name:
            module.train()


def wrap_peft(encoder: CLIPEncoder, peft_model: torch.nn.Module) -> CLIPEncoder:
    """A ``CLIPEncoder`` that runs ``peft_model`` with ``encoder``'s tokenizer and preprocessing."""
    inner = peft_model.base_model.model if hasattr(peft_model, "base_model") else peft_model
    wrapped = CLIPEncoder(inner, encoder.tokenizer, encoder.preprocess, f"{encoder.name}+lora", encoder.backend)
    wrapped.peft_model = peft_model  # kept for saving, merging and disabling the adapters
    return wrapped


def lora_parameter_count(encoder: CLIPEncoder) -> int:
    """Number of LoRA parameters in a stage-2 encoder."""
    return sum(p.numel() for n, p in encoder.peft_model.named_parameters() if "lora_" in n)


def lora_state(encoder: CLIPEncoder) -> dict[str, torch.Tensor]:
    """The LoRA weights as PEFT saves them (adapter name stripped from the keys), CPU float tensors."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(encoder.peft_model).items()}


def merged_copy(encoder: CLIPEncoder) -> CLIPEncoder:
    """A plain encoder with the LoRA weights folded into the base weights (serving path).

    Costs what the bare new model costs per query; outputs match the unmerged encoder to float
    rounding.
    """
    peft_model = copy.deepcopy(encoder.peft_model)
    merged = peft_model.merge_and_unload()
    out = CLIPEncoder(merged, encoder.tokenizer, encoder.preprocess, f"{encoder.name}+merged", encoder.backend)
    out.model.eval()
    return out


def save_lora(encoder: CLIPEncoder, folder: Path) -> None:
    """Write the LoRA weights of ``encoder`` into ``folder`` in PEFT's format (config + safetensors).

    PEFT's generic README.md is removed: the adapter's own card describes the whole adapter.
    """
    encoder.peft_model.save_pretrained(str(folder), safe_serialization=True)
    (folder / "README.md").unlink(missing_ok=True)


def load_lora(new: CLIPEncoder, folder: Path) -> CLIPEncoder:
    """Re-inject LoRA weights saved by ``save_lora`` into a fresh copy of the new model (eval mode)."""
    from peft import PeftModel

    if not (folder / LORA_WEIGHTS).is_file():
        raise XBTError(
            f"{folder} has no {LORA_WEIGHTS} although the config says the adapter has LoRA weights; "
            "the folder is incomplete, re-save or re-download it"
        )
    try:
        with warnings.catch_warnings():
            # PEFT >= 0.22 applies a MultiheadAttention out_proj LoRA delta once where earlier versions applied it
            # twice, and doubles the saved lora_B of an adapter saved before so that its outputs stay the same: the
            # outputs are unchanged, so there is nothing to tell the user (tests/test_legacy_adapters.py checks it)
            warnings.filterwarnings(
                "ignore", message=r"Adapter '.*' was saved with PEFT < 0\.22\.0", category=UserWarning
            )
            peft_model = PeftModel.from_pretrained(copy.deepcopy(new.model), str(folder))
    except Exception as exc:  # PEFT raises several types for a mismatched or corrupt adapter
        raise XBTError(
            f"cannot load the LoRA weights in {folder} into {new.name} ({exc}); pass the new model the adapter was "
            "trained for"
        ) from exc
    enc = wrap_peft(new, peft_model.eval())
    enc.model.eval()
    return enc

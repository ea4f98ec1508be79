"""PEFT LoRA on a copy of the NEW model: inject, merge for serving, save and load.

The user's model object and its base weights are never touched: ``add_lora`` deep-copies the
model and injects LoRA layers into the copy (open_clip ``attn``/``mlp.c_fc``/``mlp.c_proj``,
transformers ``q/k/v/out_proj``/``fc1``/``fc2`` of the chosen towers, selected by a full-match
regex). The copy is a ``CLIPEncoder`` whose ``peft_model`` attribute is the ``peft.PeftModel``.
On disk the LoRA weights are PEFT's own folder (``adapter_config.json`` +
``adapter_model.safetensors``); loading reads the safetensors file only.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from .config import Stage2Config
from .encoders import CLIPEncoder
from .errors import XBTError

#: PEFT's weights file inside a LoRA folder (never its pickled ``adapter_model.bin``)
LORA_WEIGHTS = "adapter_model.safetensors"


def lora_target_regex(encoder: CLIPEncoder, towers: tuple[str, ...], targets: tuple[str, ...] | None) -> str:
    """A regex (PEFT full-matches module names) selecting the target layers of the chosen towers."""
    suffixes = targets or tuple(encoder.lora_target_modules())
    layer = "(" + "|".join(s.replace(".", r"\.") for s in suffixes) + ")"
    if encoder.backend == "transformers":
        prefix = {"image": r"vision_model\.encoder\.layers\.\d+\.", "text": r"text_model\.encoder\.layers\.\d+\."}
        return "(" + "|".join(prefix[t] for t in towers) + r")(.*\.)?" + layer
    prefix = {"image": r"visual\.transformer\.resblocks\.\d+\.", "text": r"transformer\.resblocks\.\d+\."}
    return "(" + "|".join(prefix[t] for t in towers) + ")" + layer


def add_lora(encoder: CLIPEncoder, cfg: Stage2Config) -> CLIPEncoder:
    """A new ``CLIPEncoder`` over a deep copy of ``encoder.model`` with LoRA layers injected.

    The copy is a ``peft.PeftModel``; only LoRA weights require grad. ``encoder`` is unchanged.
    PEFT initialises the LoRA weights from torch's global RNG (seed it around this call).
    """
    from peft import LoraConfig, get_peft_model

    regex = lora_target_regex(encoder, cfg.towers, cfg.target_modules)
    lora_cfg = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=regex)
    model = copy.deepcopy(encoder.model)
    try:
        peft_model = get_peft_model(model, lora_cfg)
    except ValueError as exc:
        raise XBTError(f"no LoRA target layers matched in {encoder.name} ({exc}); pass target_modules=... naming its layers") from exc
    return wrap_peft(encoder, peft_model)


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
        peft_model = PeftModel.from_pretrained(copy.deepcopy(new.model), str(folder))
    except Exception as exc:  # PEFT raises several types for a mismatched or corrupt adapter
        raise XBTError(f"cannot load the LoRA weights in {folder} into {new.name} ({exc}); pass the new model the adapter was trained for") from exc
    enc = wrap_peft(new, peft_model.eval())
    enc.model.eval()
    return enc

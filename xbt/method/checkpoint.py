"""Stage-2 checkpoints: the full training state after an epoch, to resume an interrupted run exactly.

A checkpoint is two files in the run's folder, both written atomically: ``stage2_checkpoint.safetensors``
(LoRA and projection weights, the best epoch's weights, optimizer tensors, RNG states) and
``stage2_checkpoint.json`` (epoch, optimizer scalars and param groups, scheduler, early-stopping
state, history) - nothing pickled. Each carries a ``run_key``: a hash of the configuration, the
new model's fingerprint and the training data itself (pair pixels and captions, the old image
vectors, the caption-bank texts), so a folder written by another run - even one with as many
pairs - is refused instead of silently resumed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ..core.errors import XBTError
from ..core.files import dumps_json, save_tensors, write_json
from ..core.hashing import hash_images, hash_texts
from .config import Stage2Config

TENSORS_NAME = "stage2_checkpoint.safetensors"
META_NAME = "stage2_checkpoint.json"


def run_key(
    cfg: Stage2Config,
    new_fingerprint: str,
    pixels: torch.Tensor,
    captions: list[str],
    old_vectors: dict[str, torch.Tensor | None],
    bank_captions: list[str] | None,
) -> str:
    """A hex id of one stage-2 run: configuration, new model and every input that shapes training.

    ``pixels`` [n, 3, H, W] are the preprocessed pair images; ``old_vectors`` the OLD-model vectors
    of the pairs by name (``"images"``, ``"captions"``; ``None`` when absent); ``bank_captions`` the
    stage-1 texts the caption bank and the text head draw from, or ``None``.
    """
    h = hashlib.sha256(dumps_json({"cfg": cfg.to_dict(), "new": new_fingerprint}, indent=None).encode())
    h.update(hash_images(pixels).encode())
    h.update(hash_texts(captions).encode())
    for name in sorted(old_vectors):
        vectors = old_vectors[name]
        h.update(f"{name}:".encode() + (b"none" if vectors is None else hash_images(vectors.detach().cpu()).encode()))
    h.update(hash_texts(bank_captions or []).encode())
    return h.hexdigest()[:24]


def trainable_state(lora_enc, projection) -> dict[str, torch.Tensor]:
    """CPU copies of the trainable LoRA weights (``lora.*``) and the projection's (``projection.*``)."""
    state = {
        f"lora.{k}": v.detach().cpu().clone() for k, v in lora_enc.peft_model.named_parameters() if v.requires_grad
    }
    state.update({f"projection.{k}": v.detach().cpu().clone() for k, v in projection.state_dict().items()})
    return state


def load_trainable_state(lora_enc, projection, state: dict[str, torch.Tensor]) -> None:
    """Copy a ``trainable_state`` back into the LoRA encoder and the projection, in place."""
    params = dict(lora_enc.peft_model.named_parameters())
    with torch.no_grad():
        for key, value in state.items():
            if key.startswith("lora."):
                params[key[5:]].copy_(value)
    projection.load_state_dict({k[11:]: v for k, v in state.items() if k.startswith("projection.")})


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict into tensors (safetensors) and the rest (JSON): no pickle."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"opt.{pid}.{k}"] = v.detach().cpu().clone()
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Load the optimizer state saved by ``save_checkpoint`` (``meta`` is its ``"optimizer"`` entry)."""
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith("opt."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    for key, v in meta["scalars"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(
    folder: Path,
    epoch: int,
    key: str,
    lora_enc,
    projection,
    best: dict[str, Any],
    opt,
    sched,
    gen: torch.Generator,
    history: dict,
) -> None:
    """Write the training state after ``epoch``: tensors first, then the JSON that points at them.

    ``best`` holds the early-stopping state (``loss``, ``epoch``, ``bad_epochs``, ``state``: the
    best weights). The global CPU RNG state is saved too: the training loop runs with its own
    seeded global stream (``xbt.stage1.seeded``), which dropout draws from.
    """
    opt_tensors, opt_meta = _optimizer_tensors(opt)
    tensors = {
        **trainable_state(lora_enc, projection),
        **opt_tensors,
        "rng.generator": gen.get_state(),
        "rng.torch": torch.get_rng_state(),
    }
    tensors.update({f"best.{k}": v for k, v in best["state"].items()})
    meta = {
        "epoch": epoch,
        "key": key,
        "optimizer": opt_meta,
        "scheduler": sched.state_dict(),
        "best_loss": best["loss"],
        "best_epoch": best["epoch"],
        "bad_epochs": best["bad_epochs"],
        "history": history,
    }
    save_tensors(folder / TENSORS_NAME, tensors, metadata={"epoch": str(epoch), "key": key})
    write_json(folder / META_NAME, meta)


def load_checkpoint(folder: Path, key: str) -> tuple[dict[str, torch.Tensor], dict] | None:
    """The saved ``(tensors, meta)`` if ``folder`` holds a checkpoint of this same run, else ``None``.

    A checkpoint of another run (different ``key``) raises an ``XBTError``.
    """
    meta_path, tensor_path = folder / META_NAME, folder / TENSORS_NAME
    if not (meta_path.is_file() and tensor_path.is_file()):
        return None
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("key") != key:
        raise XBTError(
            f"{folder} holds a stage-2 checkpoint of a different run (other configuration, model or training data); "
            "use another checkpoint_dir, or delete the old checkpoint to start afresh"
        )
    with safe_open(str(tensor_path), "pt") as f:
        written = (f.metadata() or {}).get("epoch")
    if written != str(meta.get("epoch")):
        raise XBTError(
            f"{folder} holds a torn stage-2 checkpoint (tensors of epoch {written}, state of epoch "
            f"{meta.get('epoch')}: "
            "the run stopped while writing it); delete the checkpoint files to start afresh"
        )
    return load_file(str(tensor_path)), meta

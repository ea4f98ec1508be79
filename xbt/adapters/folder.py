"""The adapter folder on disk: written atomically, read back tensor by tensor, identified by content.

Format 2 (``xbt.adapter_config``): ``xbt_config.json``, ``heads.safetensors`` (head ``h``'s
parameters under ``h.<name>``; a head shared by both modalities is stored once, as ``shared``),
``lora/`` in PEFT's format, ``README.md`` (the model card). Format 1 folders
(``adapter_config.json`` + ``projection.safetensors``, one unprefixed projection) are read too.
``write_folder`` refuses to replace a folder holding a different adapter or foreign files; what
counts as "the same adapter" is ``content_id``, computed alike from an adapter in memory and from a
folder's files, so re-saving one after an xbt upgrade (or over its format-1 folder) is allowed.
A rewrite keeps every file it does not write (the user's notes, evaluation outputs, ...): only the
adapter's own names (``ADAPTER_NAMES``, format 1's included) are replaced or dropped.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..core.errors import XBTError
from ..core.files import atomic_path, save_tensors, write_json, write_text
from ..models.head import Projection
from ..models.lora import LORA_WEIGHTS
from .config import (
    CARD_NAME,
    CONFIG_NAME,
    FORMAT,
    HEADS_NAME,
    LEGACY_CONFIG_NAME,
    LEGACY_HEADS_NAME,
    LORA_DIR,
    MODALITIES,
    AdapterConfig,
    read_config,
)
from .hub import model_card

#: the top-level names an adapter folder's writer owns: written anew, or dropped when this adapter
#: has none (``lora/`` of an adapter without LoRA, format 1's files); everything else is the user's
ADAPTER_NAMES = (CONFIG_NAME, HEADS_NAME, LORA_DIR, CARD_NAME, LEGACY_CONFIG_NAME, LEGACY_HEADS_NAME)


def write_folder(
    path: str | os.PathLike,
    config: AdapterConfig,
    tensors: dict[str, torch.Tensor],
    lora: dict[str, torch.Tensor],
    save_lora: Callable[[Path], None],
    overwrite: bool = False,
    repo_id: str | None = None,
) -> Path:
    """Write an adapter folder at ``path`` atomically, keeping the files there it does not write; returns the path.

    ``tensors`` are the head weights (``<head>.<parameter>``), ``lora`` the LoRA weights (for the
    id), ``save_lora(folder)`` writes ``lora/`` (a no-op without LoRA). ``repo_id`` names the card.

    The whole adapter (each file written atomically) is assembled in a temporary sibling folder;
    the user's files of an existing ``path`` are hard-linked into it, and it is swapped into place
    (``xbt.core.files.atomic_path``). A crash leaves either the previous folder or the new one at
    ``path``, never the config of one adapter beside the weights of another; the user's files are
    in both. ``overwrite=True`` replaces a different adapter (or writes into a folder of foreign
    files); the user's files are kept then too.
    """
    target = Path(path)
    adapter_id = content_id(config, tensors, lora)
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        try:
            existing = folder_adapter_id(target)
        except XBTError as exc:
            raise XBTError(
                f"{target} already holds files this xbt cannot read as an adapter ({exc}); choose an empty or "
                "new directory, or pass overwrite=True to write the adapter there anyway (files it does not write are kept)"
            ) from exc
        if existing != adapter_id:
            raise XBTError(
                f"{target} already holds a different adapter (id {existing}); pass overwrite=True to "
                "replace it or save elsewhere"
            )
    config = config.replace(adapter_id=adapter_id)
    with atomic_path(target, folder=True, owned=ADAPTER_NAMES) as tmp:
        write_json(tmp / CONFIG_NAME, config.to_dict())
        save_tensors(tmp / HEADS_NAME, tensors, metadata={"format": FORMAT})
        save_lora(tmp / LORA_DIR)
        write_text(tmp / CARD_NAME, str(model_card(config, repo_id)))
    return target


def read_heads(folder: Path, config: AdapterConfig) -> dict[str, Projection]:
    """The projection heads of a saved adapter, by modality (one object for a shared head)."""
    path = folder / HEADS_NAME
    legacy = not path.is_file() and (folder / LEGACY_HEADS_NAME).is_file()
    path = folder / LEGACY_HEADS_NAME if legacy else path
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise XBTError(f"{path} is missing or corrupt ({exc}); re-save or re-download the adapter") from exc
    if legacy:  # format 1: one projection, unprefixed keys
        state = {f"shared.{k}": v for k, v in state.items()}
    built = {}
    for name in set(config.heads.values()):
        head = Projection(**config.head_shapes[name])
        try:
            head.load_state_dict({k[len(name) + 1 :]: v for k, v in state.items() if k.startswith(f"{name}.")})
        except RuntimeError as exc:
            raise XBTError(f"{path} does not match its config ({exc}); the folder is corrupt") from exc
        built[name] = head.eval()
    return {m: built[config.heads[m]] for m in MODALITIES}


def content_id(config: AdapterConfig, tensors: dict[str, torch.Tensor], lora: dict[str, torch.Tensor]) -> str:
    """Hex id of an adapter's content: its config (less writer version, id and evaluation) and all tensors."""
    content = {k: v for k, v in config.content().items() if k != "evaluation"}
    h = hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode())
    for k, v in sorted({**tensors, **{f"lora.{k}": v for k, v in lora.items()}}.items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


def folder_adapter_id(folder: Path) -> str:
    """The ``adapter_id`` of what ``folder`` holds, computed from its files (format 1 too)."""
    config = read_config(folder)
    heads = read_heads(folder, config)
    names = sorted(set(config.heads.values()))
    by_name = {config.heads[m]: heads[m] for m in MODALITIES}
    tensors = {f"{n}.{k}": v for n in names for k, v in by_name[n].state_dict().items()}
    lora = load_file(str(folder / LORA_DIR / LORA_WEIGHTS)) if config.lora else {}
    return content_id(config, tensors, lora)

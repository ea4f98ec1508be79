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

``xbt_config.json`` also records, outside ``AdapterConfig`` (so not in ``adapter_id``), the sha256
of every other file the writer writes but the card (``"files"``) and, for a method name xbt does
not make (``known_method``), ``"user_method": true``. ``verify_folder`` checks a folder before it
is loaded: each digest, the ``adapter_id`` against its content, the method name, the fingerprints.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..core.errors import XBTError, need
from ..core.files import atomic_path, save_tensors, write_json, write_text
from ..core.hashing import file_digest
from ..models.head import Projection
from ..models.lora import LORA_WEIGHTS
from .config import (
    CARD_NAME,
    CONFIG_NAME,
    FORMAT,
    FUSION_KINDS,
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
#: the ``xbt_config.json`` keys outside ``AdapterConfig``: file -> sha256, and "the method is the user's own"
FILES_KEY, USER_METHOD_KEY = "files", "user_method"
#: PEFT's config file inside ``lora/``
LORA_CONFIG = "adapter_config.json"
#: the methods xbt makes; a name xbt gives is one of them, ``xbt-stage1`` / ``xbt-stage1+2`` (the demo's
#: rows), each optionally fused (``+slerp``, ``+nlerp``: ``xbt+slerp``, ``linear+slerp``, ...)
KNOWN_METHODS = ("xbt", "procrustes", "linear", *FUSION_KINDS)
_METHOD = re.compile(r"(xbt(-stage1(\+2)?)?|procrustes|linear|slerp|nlerp)(\+(slerp|nlerp))*")


def known_method(name: object) -> bool:
    """Whether ``name`` is a method name xbt gives (see ``KNOWN_METHODS``)."""
    return isinstance(name, str) and _METHOD.fullmatch(name) is not None


def digested_files(config: AdapterConfig) -> list[str]:
    """The files (relative paths) whose sha256 a format-2 ``xbt_config.json`` records for ``config``."""
    return [HEADS_NAME, *((f"{LORA_DIR}/{LORA_WEIGHTS}", f"{LORA_DIR}/{LORA_CONFIG}") if config.lora else ())]


def _user_method(config: AdapterConfig) -> bool:
    names = [config.method, *([config.fusion.get("base_method")] if config.fusion else [])]
    return not all(known_method(n) for n in names)


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
                "new directory, or pass overwrite=True to write the adapter there anyway (files it does not write "
                "are kept)"
            ) from exc
        if existing != adapter_id:
            raise XBTError(
                f"{target} already holds a different adapter (id {existing}); pass overwrite=True to "
                "replace it or save elsewhere"
            )
    config = config.replace(adapter_id=adapter_id)
    with atomic_path(target, folder=True, owned=ADAPTER_NAMES) as tmp:
        save_tensors(tmp / HEADS_NAME, tensors, metadata={"format": FORMAT})
        save_lora(tmp / LORA_DIR)
        record = config.to_dict()
        record[FILES_KEY] = {name: file_digest(tmp / name) for name in digested_files(config)}
        if _user_method(config):
            record[USER_METHOD_KEY] = True
        write_json(tmp / CONFIG_NAME, record)
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


def folder_adapter_id(folder: Path, config: AdapterConfig | None = None) -> str:
    """The ``adapter_id`` of what ``folder`` holds, computed from its files (format 1 too; ``config``: its config,
    read)."""
    config = config or read_config(folder)
    heads = read_heads(folder, config)
    names = sorted(set(config.heads.values()))
    by_name = {config.heads[m]: heads[m] for m in MODALITIES}
    tensors = {f"{n}.{k}": v for n in names for k, v in by_name[n].state_dict().items()}
    lora = load_file(str(folder / LORA_DIR / LORA_WEIGHTS)) if config.lora else {}
    return content_id(config, tensors, lora)


def verify_folder(folder: Path, config: AdapterConfig, check_fingerprint: bool = True) -> bool:
    """Refuse to load ``folder`` (whose config is ``config``) unless its files are the ones that were saved.

    Checks each recorded file digest (a changed or swapped file), the method name (one xbt gives,
    or marked as the user's own), and unless ``check_fingerprint=False`` that both model references
    carry a weights fingerprint (the old one when it names a real model). Returns whether the folder
    recorded digests: then the loader also runs ``check_adapter_id`` (after the model checks, whose
    messages say more about an edited model reference). A folder saved before digests were recorded
    (or in format 1) returns False after one ``UserWarning``: its digests, method and id are not checked.
    """
    if check_fingerprint:
        for role, ref in (("new", config.new_model), ("old", config.old_model)):
            if not ref.fingerprint and (role == "new" or ref.backend is not None):
                raise XBTError(
                    f"{folder / CONFIG_NAME} records no weights fingerprint for its {role} model ({ref.label!r}; "
                    f"key {role}_model.fingerprint), so the {role} model given cannot be checked; re-save or "
                    "re-download the adapter, or pass check_fingerprint=False to load it without that check"
                )
    path = folder / CONFIG_NAME
    raw = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    recorded = raw.get(FILES_KEY)
    if recorded is None:
        warnings.warn(
            f"{folder} was saved by an xbt that recorded no file digests: its weights and config were not "
            "checked against each other (file digests, adapter_id). Re-save it with save_pretrained to record them",
            UserWarning,
            stacklevel=3,
        )
        return False
    need(
        isinstance(recorded, dict) and all(isinstance(v, str) for v in recorded.values()),
        f'{path}: "{FILES_KEY}" must map file names to sha256 digests; re-save or re-download the adapter',
    )
    expected = digested_files(config)
    for name in sorted(set(expected) | set(recorded)):
        if name not in recorded or name not in expected:
            raise XBTError(
                f"{path} {'records no digest for' if name in expected else 'records a digest of an unexpected file'} "
                f"{name!r}: the config was edited; re-save or re-download the adapter"
            )
        file = folder / name
        actual = file_digest(file) if file.is_file() else None
        if actual != recorded[name]:
            found = "it is absent" if actual is None else f"its sha256 is {actual[:16]}..."
            raise XBTError(
                f"{file} is missing or corrupt: {found} but {CONFIG_NAME} records {recorded[name][:16]}... (the file "
                "was changed, or replaced by another adapter's); re-save the adapter or re-download it"
            )
    if _user_method(config) and raw.get(USER_METHOD_KEY) is not True:
        names = sorted({config.method, *([config.fusion.get("base_method")] if config.fusion else [])})
        raise XBTError(
            f"{path}: unknown method {names} (key method{' / fusion.base_method' if config.fusion else ''}); "
            f"xbt gives {list(KNOWN_METHODS)}, xbt-stage1 / xbt-stage1+2, each optionally fused (e.g. 'xbt+slerp', "
            f"'linear+nlerp'); a name of your own is recorded with \"{USER_METHOD_KEY}\": true by save_pretrained. "
            "Re-save or re-download the adapter"
        )
    return True


def check_adapter_id(folder: Path, config: AdapterConfig) -> None:
    """Refuse ``folder`` when its recorded ``adapter_id`` is not the one its config and tensors give (an edited
    config)."""
    actual_id = folder_adapter_id(folder, config)
    if config.adapter_id != actual_id:
        raise XBTError(
            f"{folder / CONFIG_NAME} was edited after saving: its adapter_id is {config.adapter_id!r} but its "
            f"content (config and tensors) gives {actual_id!r}; re-save the adapter or re-download it"
        )

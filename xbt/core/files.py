"""Atomic writes: readers never see half a file or half a folder.

One helper, ``atomic_path``, hands out a temporary sibling of the target (a file path, or an empty
folder) and moves it onto the target only when the block finishes without an error: a file with
``os.replace``, a folder by renaming the old one aside, renaming the new one in and deleting the
old one (an interrupted swap leaves the previous folder intact under a dot-name). Everything xbt
writes (embedding cache, adapters, checkpoints, reports) goes through it.

JSON is written strictly: non-finite floats become ``null`` and ``allow_nan=False`` guards the
rest, so no file ever holds ``NaN`` or ``Infinity`` that other JSON readers refuse.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file


@contextmanager
def atomic_path(target: str | os.PathLike, folder: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``target`` to write into; on success it replaces ``target``.

    ``folder=False``: the sibling is a file path (not yet created) and ``os.replace`` moves it onto
    ``target``. ``folder=True``: the sibling is an empty folder, swapped into place with renames
    only. On an exception the sibling is removed and ``target`` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if folder:
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    else:
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if folder:
            _swap_folder(tmp, target)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def _swap_folder(tmp: Path, target: Path) -> None:
    if not target.exists():
        os.replace(tmp, target)
        return
    backup = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.replace(target, backup)
    try:
        os.replace(tmp, target)
    except OSError:
        os.replace(backup, target)  # put the previous folder back
        raise
    shutil.rmtree(backup, ignore_errors=True)


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by ``None`` and tuples as lists (JSON has no NaN)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def dumps_json(obj: Any, indent: int | None = 2) -> str:
    """Strict JSON text of ``obj`` (non-finite floats as ``null``), ending in a newline."""
    return json.dumps(json_safe(obj), indent=indent, allow_nan=False, ensure_ascii=False) + "\n"


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as strict JSON (see ``dumps_json``) to ``path`` atomically; returns the path."""
    return write_text(path, dumps_json(obj))


def save_tensors(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> Path:
    """Write ``tensors`` as a safetensors file at ``path`` atomically (contiguous CPU copies); returns the path."""
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    return Path(path)

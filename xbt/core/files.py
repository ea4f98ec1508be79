"""Atomic writes: readers never see half a file or half a folder, and a rewrite keeps the user's files.

One helper, ``atomic_path``, hands out a temporary sibling of the target (a file path, or an empty
folder) and moves it onto the target only when the block finishes without an error. Everything xbt
writes (embedding cache, adapters, exports, galleries, checkpoints, reports) goes through it.

- Files and folders get the mode the umask gives (``0o666`` / ``0o777`` less the umask), as
  ``open()`` and ``os.makedirs`` would: a folder saved by one user is readable by the account that
  serves it, where ``mkstemp``'s 0600 / 0700 was not.
- A folder rewrite keeps what it did not write: every entry of the previous folder that the new
  one lacks (and that is not one of the writer's ``owned`` names) is hard-linked (copied where the
  file system has no hard links) into the new folder before the swap.
- Temporaries are named ``.<target>.tmp-<host>-<pid>-<random>`` (the assembled copy) and
  ``.<target>.old-<host>-<pid>-<random>`` (the previous folder during a swap); the next
  ``atomic_path`` on the same target removes those of a dead process (see ``remove_stale``).

JSON is written strictly: non-finite floats become ``null`` and ``allow_nan=False`` guards the
rest, so no file ever holds ``NaN`` or ``Infinity`` that other JSON readers refuse.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

#: a dead process's temporaries are removed once nothing in them changed for this many seconds
STALE_AFTER_S = 10 * 60
#: temporaries named by an xbt before pid-stamped names (no pid to ask): removed after a day
LEGACY_STALE_AFTER_S = 24 * 60 * 60
#: this machine, as temporaries name it (a pid means nothing on another host sharing the folder)
HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-z]+$")


def temp_name(target: Path, kind: str = "tmp") -> Path:
    """A fresh sibling name of ``target`` for a temporary (``kind`` ``"tmp"``) or a swapped-out folder (``"old"``)."""
    return target.with_name(f".{target.name}.{kind}-{HOST}-{os.getpid()}-{secrets.token_hex(4)}")


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is an ``atomic_path`` temporary (of any target), so never a user's file to keep."""
    return _TEMP.match(name) is not None


@contextmanager
def atomic_path(target: str | os.PathLike, folder: bool = False, owned: Collection[str] = ()) -> Iterator[Path]:
    """Yield a temporary sibling of ``target`` to write into; on success it replaces ``target``.

    ``folder=False``: the sibling is an empty file (created with the umask's mode) and ``os.replace``
    moves it onto ``target``. ``folder=True``: the sibling is an empty folder; when the block ends,
    every entry of an existing ``target`` that the new folder lacks, other than the names in
    ``owned`` (what this writer writes or once wrote, so a stale one is dropped), is carried into
    the new folder (hard links: no data is copied or moved), then the folders are swapped with two
    renames. On an exception the sibling is removed and ``target`` is left as it was.

    What a crash leaves: while the block runs or entries are carried over, ``target`` untouched and
    a temporary beside it; between the two renames (microseconds), no ``target`` and the complete
    previous folder as ``.<target>.old-...``, which the next ``atomic_path`` on ``target`` renames
    back; after them, the complete new folder. ``target`` never holds a mix of two writes.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(target)
    tmp = _create_temp(target, folder)
    mode = tmp.stat().st_mode & 0o777  # the umask's, read off what was just created (no umask race)
    try:
        yield tmp
        if folder:
            _swap_folder(tmp, target, set(owned))
        else:
            if tmp.stat().st_mode & 0o777 != mode:  # a writer that made its own file (safetensors: 0600)
                os.chmod(tmp, mode)
            os.replace(tmp, target)
    finally:
        _remove(tmp)


def _create_temp(target: Path, folder: bool) -> Path:
    """Create an empty temporary file or folder beside ``target`` with the mode the umask gives."""
    while True:
        tmp = temp_name(target)
        try:
            if folder:
                os.mkdir(tmp, 0o777)
            else:
                os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return tmp
        except FileExistsError:
            continue


def _swap_folder(tmp: Path, target: Path, owned: set[str]) -> None:
    if not target.exists():
        os.replace(tmp, target)
        return
    for entry in target.iterdir() if target.is_dir() else ():
        if _keep(entry.name, owned) and not os.path.lexists(tmp / entry.name):
            _carry(entry, tmp / entry.name)
    backup = temp_name(target, "old")
    os.replace(target, backup)
    try:
        os.replace(tmp, target)
    except OSError:
        os.replace(backup, target)  # put the previous folder back
        raise
    swept = backup.iterdir() if backup.is_dir() and not backup.is_symlink() else ()  # never out of a linked folder
    for entry in swept:  # a file the user added while the new folder was assembled
        if _keep(entry.name, owned) and not os.path.lexists(target / entry.name):
            os.replace(entry, target / entry.name)
    _remove(backup)


def _keep(name: str, owned: set[str]) -> bool:
    return name not in owned and not is_temp_name(name)


def _link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:  # a file system without hard links: a copy, with the user's mode and times
        shutil.copy2(src, dst, follow_symlinks=False)


def _carry(src: Path, dst: Path) -> None:
    """Put the user's ``src`` (file, link or folder tree) at ``dst`` too, sharing the files' data."""
    if src.is_symlink():
        os.symlink(os.readlink(src), dst)
    elif src.is_dir():
        shutil.copytree(src, dst, symlinks=True, copy_function=_link_or_copy)
    else:
        _link_or_copy(src, dst)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        path.unlink(missing_ok=True)


def remove_stale(target: str | os.PathLike, now: float | None = None) -> list[Path]:
    """Clear the temporaries a dead process left beside ``target``; returns those removed or restored.

    Stale means: made on this host (its name says which), its pid is not a running process, and
    nothing in it changed for ``STALE_AFTER_S``. Why all three: a pid means something only on the
    host that made it (a network folder is written from several); a pid taken again by a live
    process keeps the temporary (wasted space, never lost data); the quiet time guards a live writer
    in another pid namespace of the same host (a container). A swapped-out previous folder
    (``.old-``) is renamed back when ``target`` is missing (a crash between the swap's two renames)
    and removed otherwise. The names an older xbt used (``mkstemp`` / ``mkdtemp`` ones, no pid) are
    removed after ``LEGACY_STALE_AFTER_S`` untouched.
    """
    target = Path(target)
    now = time.time() if now is None else now
    name = re.escape(target.name)
    legacy = re.compile(rf"^\.{name}\.(?:[a-z0-9_]{{8}}\.tmp|tmp-[a-z0-9_]{{8}}|(?P<old>old)-\d+)$")
    found = []
    try:
        entries = [e for e in os.scandir(target.parent) if e.name.startswith(f".{target.name}.")]
    except OSError:
        return []
    for entry in entries:
        path, match, old = Path(entry.path), _TEMP.match(entry.name), legacy.match(entry.name)
        if match and match["name"] == target.name:
            quiet = now - _newest_mtime(path) >= STALE_AFTER_S
            if match["host"] == HOST and not _alive(int(match["pid"])) and quiet:
                found.append((path, match["kind"] == "old"))
        elif old and now - _newest_mtime(path) >= LEGACY_STALE_AFTER_S:
            found.append((path, old["old"] is not None))
    done = []
    for path, is_backup in sorted(found, key=lambda f: -_newest_mtime(f[0])):  # the newest backup wins
        if is_backup and path.is_dir() and not os.path.lexists(target):
            os.replace(path, target)
        else:
            _remove(path)
        done.append(path)
    return done


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a running process here (``True`` when it cannot be told: never remove then)."""
    if os.name == "nt":  # os.kill would end the process there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # someone else's live process
        return True
    return True


def _newest_mtime(path: Path) -> float:
    """The latest modification time of ``path`` and, for a folder, of anything in it."""
    try:
        newest = path.lstat().st_mtime
    except OSError:
        return 0.0
    if path.is_dir() and not path.is_symlink():
        for root, dirs, files in os.walk(path):
            for n in dirs + files:
                try:
                    newest = max(newest, os.lstat(os.path.join(root, n)).st_mtime)
                except OSError:
                    pass
    return newest


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

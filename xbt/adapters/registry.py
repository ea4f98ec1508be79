"""Which class serves a saved adapter (``ADAPTER_CLASSES``, by its ``kind``) and ``load_adapter``, the one loader."""

from __future__ import annotations

import os
from typing import Any

from ..core.errors import XBTError
from .config import read_config
from .folder import check_adapter_id, verify_folder
from .hub import resolve

#: saved ``kind`` -> adapter class, filled by ``register_adapter`` where each class is defined
ADAPTER_CLASSES: dict[str, type] = {}


def register_adapter(cls: type) -> type:
    """Class decorator: serve folders whose saved ``kind`` is ``cls.adapter_kind`` by ``cls``."""
    ADAPTER_CLASSES[cls.adapter_kind] = cls
    return cls


def load_adapter(
    path_or_repo: str | os.PathLike,
    new: Any,
    old: Any = None,
    revision: str | None = None,
    check_fingerprint: bool = True,
):
    """Load an adapter saved by ``save_pretrained``, from a folder or a Hugging Face Hub repo.

    Args:
        path_or_repo: a local folder (format 2, or format 1's ``adapter_config.json``), or a Hub
            repo id (``"org/name"``; only the adapter's JSON, safetensors and card are fetched).
        new: the NEW model the adapter was made for (``xbt.load_clip`` result or raw model).
        old: the OLD model; required for a fusion adapter, checked when given.
        revision: the Hub revision (branch, tag or commit).
        check_fingerprint: refuse models whose weights differ from the recorded ones (default);
            ``False`` accepts them when you know they are equivalent (e.g. another precision), and
            a reference that records no fingerprint.

    Before loading, the folder is checked to hold the adapter that was saved (``verify_folder``):
    each file's recorded sha256, the ``adapter_id`` against the content, the method name; a folder
    from an xbt that recorded no digests loads with one warning.

    Returns:
        the adapter, of the class its saved ``kind`` names (``ADAPTER_CLASSES``).
    """
    folder = resolve(path_or_repo, revision)
    config = read_config(folder)
    if config.kind not in ADAPTER_CLASSES:
        raise XBTError(
            f"{path_or_repo}: unknown adapter kind {config.kind!r}; this xbt serves {sorted(ADAPTER_CLASSES)}"
        )
    digested = verify_folder(folder, config, check_fingerprint)
    adapter = ADAPTER_CLASSES[config.kind].from_config(
        config, folder, new, old=old, check_fingerprint=check_fingerprint
    )
    if digested:
        check_adapter_id(folder, config)
    return adapter

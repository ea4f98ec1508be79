"""The Hugging Face Hub, with huggingface_hub's own tools: upload and download.

The model card that ``save_pretrained`` writes (and uploads go with) is built in ``xbt.adapters.card``;
``model_card`` and ``hub_model_id`` are re-exported here, where they lived before.

- ``push_folder``: uploads a saved adapter folder as it is (``HfApi.create_repo`` +
  ``HfApi.upload_folder``).
- ``resolve``: a local folder as is, or a repo id through ``snapshot_download`` restricted to the
  adapter's own files (JSON, safetensors, the card: nothing pickled, nothing unknown). With
  ``HF_HUB_OFFLINE=1`` a repo already in the Hub cache (``HF_HUB_CACHE``) loads without network.
"""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import HfApi, snapshot_download

from ..core.errors import XBTError
from .card import hub_model_id as hub_model_id  # re-exported: tests and users import it from here
from .card import model_card as model_card  # re-exported: folder.py imports it from here
from .config import (
    CARD_NAME,
    CONFIG_NAME,
    HEADS_NAME,
    LEGACY_CONFIG_NAME,
    LEGACY_HEADS_NAME,
    LORA_DIR,
    read_config,
)

#: the files of an adapter folder (format 2); uploads and downloads are limited to these
ADAPTER_FILES = (
    CONFIG_NAME,
    HEADS_NAME,
    CARD_NAME,
    f"{LORA_DIR}/adapter_config.json",
    f"{LORA_DIR}/adapter_model.safetensors",
)
#: what ``resolve`` downloads: the adapter's files, format 1's too
DOWNLOAD_PATTERNS = (*ADAPTER_FILES, LEGACY_CONFIG_NAME, LEGACY_HEADS_NAME)


def resolve(path_or_repo: str | os.PathLike, revision: str | None = None) -> Path:
    """The local folder of an adapter: ``path_or_repo`` itself, or its Hub snapshot (cache first).

    Raises an ``XBTError`` for a file, a string that is neither a folder nor a repo id, and a repo
    that cannot be fetched (naming the reason: network, token, not in the offline cache).
    """
    local = Path(path_or_repo).expanduser()
    if local.is_dir():
        return local
    if local.exists():
        raise XBTError(f"{local} is a file; pass the adapter's folder (the one holding {CONFIG_NAME})")
    repo = str(path_or_repo)
    if repo.count("/") != 1 or repo.startswith((".", "/", "~")):
        raise XBTError(f"{repo!r} is neither an existing folder nor a Hub repo id like 'org/name'")
    try:
        return Path(snapshot_download(repo, revision=revision, allow_patterns=list(DOWNLOAD_PATTERNS)))
    except Exception as exc:  # network, auth, missing repo, not cached while offline: say which and what to do
        raise XBTError(
            f"could not fetch adapter {repo!r} from the Hugging Face Hub ({type(exc).__name__}: {exc}); check the id, "
            "your token and network (with HF_HUB_OFFLINE=1 only repos already in the Hub cache load), or pass a "
            "local folder"
        ) from exc


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Upload an adapter folder written by ``save_pretrained`` to the Hub as it is; returns the repo URL.

    The folder must be a format-2 adapter (config and card present); anything else in it is left
    out of the upload.
    """
    folder = Path(folder)
    config = read_config(folder)  # refuses anything that is not an adapter, or from a newer xbt
    if not (folder / CONFIG_NAME).is_file() or not (folder / CARD_NAME).is_file():
        raise XBTError(
            f"{folder} was saved by an older xbt (no {CONFIG_NAME} and {CARD_NAME}); load it and save it again with "
            "this one (xbt.load_adapter(folder, new=...).save_pretrained(new_folder)), then push the new folder"
        )
    api = HfApi(token=token)
    url = api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        allow_patterns=list(ADAPTER_FILES),
        commit_message=commit_message or f"xbt adapter ({config.method})",
    )
    return str(url)

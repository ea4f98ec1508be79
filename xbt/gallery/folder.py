"""A gallery in migration's folder on disk: ``gallery.json``, ``old.safetensors`` and what its items are.

``old.safetensors`` holds ``vectors`` (float32 [n, d_old]) and, since galleries record what their
items are, ``item_keys`` (uint8 [n, 12]): a content hash per item taken when the gallery was built
(``xbt.core.hashing.image_key`` of an image, the first 24 hex digits of ``hash_texts([text])`` of a
caption). The backfill checks each item it re-embeds against it and records the keys of every
batch, so new-space vectors are never served for other items than those they were made from.
Folders written before keys were recorded hold no ``item_keys``: they still load, unchecked.

``known_hits.json`` (optional, written by ``xbt gallery build --pairs`` when the pairs hold some of the
gallery's own items) says which items are a right answer to which query: a caption (by its casefolded words)
for an image gallery, an image (by ``image_key``) for a caption gallery (``pair_vectors.known_hits`` finds them).
It records a digest of the item keys it was made for, so it is ignored once the folder holds other items; folders
without it know no right answers. ``header_lines`` and ``result_lines`` lay a search's hits out for a person (what
each item is, ✓ on the known right answers, 80 columns); ``check_migration_folder`` refuses to roll back or cut
over a folder that is not a gallery in migration.

The backfill's batch files are read and checked here too (``read_batch``: checksums;
``check_batch_items``: the items they were embedded from). ``check_save_over_backfill`` refuses to write a gallery
over a folder whose backfill has started
for other items (``MixedGallery.save`` calls it).
"""

from __future__ import annotations

import hashlib
import json
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ..core.errors import XBTError
from ..core.files import write_json
from ..core.hashing import file_digest, hash_texts, image_key
from ..core.names import BACKFILL_DIR, GALLERY_FILE, OLD_VECTORS_FILE, STATIC_GALLERY, gallery_kind

#: bytes of one item's content hash (24 hex digits)
KEY_BYTES = 12
#: the batch-file metadata field holding the hex keys of its items, in the order of its ids
BATCH_KEYS = "item_keys"
#: the optional file of known right answers (``known_hits``), beside ``gallery.json``
KNOWN_HITS_FILE = "known_hits.json"


def item_keys(items: Sequence[Any], modality: str) -> np.ndarray:
    """The content hash of each item: uint8 [n, 12] (images by mode, size and pixels; captions by text)."""
    hexes = [image_key(x) if modality == "image" else hash_texts([str(x)])[:24] for x in items]
    return np.frombuffer(bytes.fromhex("".join(hexes)), np.uint8).reshape(len(hexes), KEY_BYTES).copy()


def keys_to_hex(keys: np.ndarray) -> str:
    """The keys [m, 12] as one hex string (a batch file's metadata)."""
    return np.ascontiguousarray(keys, np.uint8).tobytes().hex()


def keys_from_hex(text: str) -> np.ndarray:
    """The keys [m, 12] of ``keys_to_hex``."""
    return np.frombuffer(bytes.fromhex(text), np.uint8).reshape(-1, KEY_BYTES).copy()


def _keys_digest(keys: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(keys, np.uint8).tobytes()).hexdigest()


def write_known_hits(folder: str | Path, keys: np.ndarray, hits: dict[str, list[int]], source: str) -> Path:
    """Write ``known_hits.json`` (atomically) for the items whose keys are ``keys``; returns its path."""
    record = {"format": 1, "source": source, "items_sha256": _keys_digest(keys), "hits": hits}
    return write_json(Path(folder) / KNOWN_HITS_FILE, record)


def read_known_hits(folder: str | Path, keys: np.ndarray | None) -> tuple[dict[str, list[int]], str]:
    """``(hits, where they come from)`` of a folder's ``known_hits.json``; ``({}, why not)`` when it has none.

    Ignored (with the reason) when unreadable, or made for other items than ``keys`` (the gallery's item keys).
    """
    file = Path(folder) / KNOWN_HITS_FILE
    if not file.is_file():
        return {}, ""
    try:
        record = json.loads(file.read_text(encoding="utf-8"))
        hits, source, digest = record["hits"], str(record["source"]), record["items_sha256"]
        if not isinstance(hits, dict):
            raise TypeError("'hits' is not a mapping")
    except (ValueError, KeyError, TypeError) as exc:
        return {}, f"{file} is unreadable ({type(exc).__name__}: {exc}); build the gallery again with --pairs"
    if keys is None or digest != _keys_digest(keys):
        return {}, f"{file} was written for other items than the gallery's; build it again with --pairs"
    n = len(keys)
    clean = {str(q): [int(i) for i in ids if isinstance(i, int) and 0 <= i < n] for q, ids in hits.items()}
    return {q: ids for q, ids in clean.items() if ids}, source


def read_meta(folder: str | Path) -> dict[str, Any]:
    """The ``gallery.json`` of a gallery folder, or an ``XBTError`` that says which file is missing or unreadable.

    A folder with a backfill in progress must not simply be built again (its new vectors belong to its
    items), so an unreadable file's fix is: roll the backfill back, then rebuild, or build a new folder.
    """
    folder = Path(folder)
    meta_file = folder / GALLERY_FILE
    if not folder.is_dir():
        raise XBTError(f"there is no gallery folder {folder}; give the folder xbt gallery build wrote (--gallery DIR)")
    if not meta_file.is_file():
        raise XBTError(f"{folder} holds no {GALLERY_FILE}; build the gallery first (xbt gallery build)")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError both are
        meta = exc
    if not isinstance(meta, dict):
        raise XBTError(
            f"{meta_file} is unreadable (truncated or corrupt: {meta}); roll its backfill back "
            f"(xbt gallery rollback --gallery {folder}) and build the gallery again, or build it in a new folder"
        )
    return meta


def check_migration_folder(folder: str | Path, action: str) -> None:
    """Refuse to ``action`` (``"roll back"``, ``"cut over"``) a folder that is not a gallery in migration.

    A missing folder or ``gallery.json`` is refused by ``read_meta``, a search page's gallery here, and a cutover of a
    ``gallery.json`` without its item count. A damaged ``gallery.json`` may still roll back (part of its fix).
    """
    meta_file = Path(folder) / GALLERY_FILE
    try:
        meta = read_meta(folder)
    except XBTError:
        if action == "roll back" and meta_file.is_file():
            return
        raise
    if gallery_kind(meta) == STATIC_GALLERY:
        raise XBTError(
            f"{folder} is a search page's gallery (xbt app --save-gallery), which has no backfill to {action}; give "
            "a folder written by xbt gallery build"
        )
    if action == "cut over" and not isinstance(meta.get("size"), int):
        raise XBTError(f"{meta_file} records no item count (size): give a folder written by xbt gallery build")


def read_old_tensors(folder: str | Path) -> dict[str, torch.Tensor]:
    """``old.safetensors`` of a gallery folder: ``vectors`` [n, d_old] and, if recorded, ``item_keys`` [n, 12].

    The file is only ever written whole (``save``), so an unreadable one was cut short or damaged
    outside xbt: building the gallery again from the same items and models rewrites it and keeps the backfill.
    """
    file = Path(folder) / OLD_VECTORS_FILE
    fix = (
        f"build the gallery again into {Path(folder)} with the same items and models (xbt gallery build; its "
        "backfill is kept)"
    )
    if not file.is_file():
        raise XBTError(f"{file} is missing; {fix}")
    try:
        return load_file(str(file))
    except Exception as exc:  # safetensors raises its own error types for a cut-short header or body
        raise XBTError(f"{file} is unreadable (truncated or corrupt: {type(exc).__name__}: {exc}); {fix}") from None


def read_old_vectors(folder: str | Path) -> torch.Tensor:
    """The old vectors [n, d_old] of a gallery folder's ``old.safetensors``, or an ``XBTError`` with the fix."""
    return read_old_tensors(folder)["vectors"]


def read_item_keys(folder: str | Path) -> np.ndarray | None:
    """The recorded item keys uint8 [n, 12] of a gallery folder (``None``: none recorded, or the file is
    unreadable)."""
    try:
        keys = read_old_tensors(folder).get("item_keys")
    except XBTError:
        return None
    return None if keys is None else keys.numpy().astype(np.uint8)


def first_difference(a: np.ndarray, b: np.ndarray) -> int | None:
    """The first row where keys ``a`` and ``b`` [m, 12] differ (``None``: equal)."""
    diff = np.flatnonzero((np.asarray(a) != np.asarray(b)).any(1))
    return int(diff[0]) if len(diff) else None


def _batch_keys(folder: Path, manifest: dict[str, Any]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(file, ids, keys)`` of each committed batch that records its items' keys (unreadable ones skipped)."""
    out = []
    for entry in manifest.get("batches", []):
        try:
            with safe_open(str(folder / BACKFILL_DIR / entry["file"]), framework="np") as f:
                meta, ids = f.metadata() or {}, f.get_tensor("ids")
        except Exception:  # a damaged batch is refused when the gallery is opened, with its own fix
            continue
        if BATCH_KEYS in meta:
            out.append((entry["file"], ids.astype(np.int64), keys_from_hex(meta[BATCH_KEYS])))
    return out


def check_save_over_backfill(folder: str | Path, keys: np.ndarray | None, vectors: torch.Tensor) -> None:
    """Refuse to save a gallery of other items over ``folder`` when its backfill has started there.

    Compared: the item keys recorded in the folder and in its batch files (when both sides have them),
    else the old vectors (a gallery built without its items). A folder without a backfill is not checked.
    """
    folder = Path(folder)
    manifest_file = folder / BACKFILL_DIR / "manifest.json"
    if not manifest_file.is_file():
        return
    try:
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
        manifest = manifest if isinstance(manifest, dict) else {}
    except ValueError:
        manifest = {}
    done = sum(int(e.get("count", 0)) for e in manifest.get("batches", []))

    def refused(why: str) -> XBTError:
        return XBTError(
            f"{folder} has a backfill in progress ({done} items in the new space) for {why}; saving this gallery "
            f"there would leave those new vectors on the wrong items: roll it back first (xbt gallery rollback "
            f"--gallery {folder}) or save the gallery into a new folder"
        )

    try:
        stored = read_old_tensors(folder)
    except XBTError:  # a damaged old.safetensors: saving the same items is its fix
        stored = {}
    if "vectors" in stored and stored["vectors"].shape[0] != vectors.shape[0]:
        raise refused(f"{stored['vectors'].shape[0]} items, not the {vectors.shape[0]} being saved")
    if keys is not None and "item_keys" in stored:
        i = first_difference(stored["item_keys"].numpy(), keys)
        if i is not None:
            raise refused(f"other items (item {i}'s content differs from the one the folder's gallery was built from)")
    elif "vectors" in stored:
        if stored["vectors"].shape != vectors.shape or not torch.allclose(stored["vectors"], vectors, atol=1e-4):
            raise refused("items whose old vectors differ from these (changed items)")
    if keys is None:
        return
    for file, ids, batch in _batch_keys(folder, manifest):
        ok = len(ids) == len(batch) and (len(ids) == 0 or int(ids.max()) < len(keys))
        i = first_difference(keys[ids], batch) if ok else 0
        if i is not None:
            item = f"item {int(ids[i])}" if i < len(ids) else "its items"
            raise refused(f"other items (batch {file} was embedded from another {item} than the one being saved)")


def tensor_digest(ids: np.ndarray, vectors: np.ndarray) -> str:
    return hashlib.sha256(
        np.ascontiguousarray(ids, np.int64).tobytes() + np.ascontiguousarray(vectors, np.float32).tobytes()
    ).hexdigest()


def batch_name(index: int) -> str:
    """File name of batch ``index``."""
    return f"batch-{index:05d}.safetensors"


def read_batch(path: Path, expected_sha: str | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """``(ids int64 [m], vectors float32 [m, d_new], metadata)`` of a batch file, verified.

    Refused (``XBTError``) when the file is unreadable, its tensors do not match the checksum in
    its own metadata, or its bytes do not match ``expected_sha`` (the manifest's).
    """
    fix = "re-embed it: run the backfill again with repair=True (xbt gallery backfill --repair)"
    try:
        with safe_open(str(path), framework="np") as f:
            meta = f.metadata() or {}
            ids, vectors = f.get_tensor("ids"), f.get_tensor("vectors")
    except Exception as exc:
        raise XBTError(f"backfill batch {path} is corrupt or unreadable ({type(exc).__name__}: {exc}); {fix}") from exc
    if meta.get("sha256") != tensor_digest(ids, vectors):
        raise XBTError(
            f"backfill batch {path} is corrupt: its vectors do not match the checksum it was written with; {fix}"
        )
    if expected_sha is not None and file_digest(path) != expected_sha:
        raise XBTError(f"backfill batch {path} is corrupt: its SHA-256 differs from the manifest's; {fix}")
    return ids.astype(np.int64), vectors.astype(np.float32), meta


def check_batch_items(
    gallery_keys: np.ndarray | None, size: int, path: Path, ids: np.ndarray, meta: dict[str, str]
) -> None:
    """Refuse a batch whose recorded item hashes differ from the gallery's (unchecked when either has none)."""
    if gallery_keys is None or BATCH_KEYS not in meta:
        return
    keys = keys_from_hex(meta[BATCH_KEYS])
    fits = len(keys) == len(ids) and (len(ids) == 0 or (0 <= ids.min() and ids.max() < size))
    j = first_difference(gallery_keys[ids], keys) if fits else 0
    if j is not None:
        item = f"item {int(ids[j])}" if j < len(ids) else "its items"
        raise XBTError(
            f"backfill batch {path} was embedded from other items than the gallery's ({item}'s content hash "
            f"differs): its new vectors would be served for the wrong items; roll the backfill back (xbt gallery "
            f"rollback --gallery {path.parent.parent}) and backfill again, or build the gallery into a new folder"
        )


# ---------------------------------------------------------------------- search results, for people


def clip(text: str, width: int, from_left: bool = False, dots: str = "…") -> str:
    """``text`` on one line, cut to ``width`` characters with ``dots`` (at its start with ``from_left``: paths)."""
    text = " ".join(str(text).split())
    if len(text) <= width:
        return text
    keep = max(width - len(dots), 1)
    return dots + text[-keep:] if from_left else text[:keep].rstrip() + dots


def glyphs(encoding: str | None) -> tuple[str, str]:
    """``(the mark of a right answer, an ellipsis)`` a stream of ``encoding`` can print: ``✓ …``, else ``* ...``."""
    try:
        "✓…".encode(encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return "*", "..."
    return "✓", "…"


def header_lines(title: str, items: str, known: bool, source: str, mark: str, dots: str, width: int = 80) -> list[str]:
    """The lines above the results: the gallery, how its items are shown, what ``mark`` means (or why none shows).

    ``known``: the gallery knows some right answers, from ``source``; else ``source`` says why it knows none (or
    is empty).
    """
    if known:
        note = f"{mark} marks a right answer the gallery knows, from {source}"
    else:
        why = source or "it learns them from --toy, or from build --pairs holding some of its own items"
        note = f"no {mark} marks: the gallery knows no right answers ({why})"
    lines = [clip(title, width, dots=dots), clip(items, width, from_left=items.startswith("items: image"), dots=dots)]
    return lines + textwrap.wrap(note, width)


def result_lines(
    label: str,
    scores: Sequence[float],
    ids: Sequence[int],
    in_new: np.ndarray,
    what: Any,
    known: set[int] | None,
    mark: str = "✓",
    dots: str = "…",
    width: int = 80,
) -> list[str]:
    """One query's results as lines of at most ``width`` characters, for a person to judge.

    ``label``: the query; ``what(i)``: ``(text, style)`` of item ``i``, style ``"quote"`` (a caption, shown in
    quotes), ``"path"`` (cut from the left) or ``"plain"``; ``known``: the items known to answer this query
    (``None``: the gallery knows no right answers at all, so nothing is said about this query). Each hit shows its
    rank, ``mark`` when it is a known answer, its id, its space (old/new), its merged score and what it is.
    """
    lines = [clip(f"query: {label}", width, from_left="/" in label and " " not in label, dots=dots)]
    found = [rank for rank, i in enumerate(ids, 1) if known and i in known]
    if known is not None and not known:
        lines.append(f"  no right answer is known for this query: no {mark} marks")
    elif known is not None and len(known) == 1:
        lines.append(
            f"  right answer: item {min(known)}, " + (f"rank {found[0]}" if found else f"not in the top {len(ids)}")
        )
    elif known:
        lines.append(f"  right answers: {len(known)} items, {len(found)} of them in the top {len(ids)}")
    digits = len(str(max([*ids, 0])))
    for rank, (score, i) in enumerate(zip(scores, ids), 1):
        if i < 0:
            continue
        hit = mark if known and i in known else " " * len(mark)
        head = f"{rank:3d}. {hit} item {i:>{digits}d}  {'new' if in_new[i] else 'old'}  {score:+.4f}  "
        text, style = what(i)
        room = width - len(head) - (2 if style == "quote" else 0)
        body = clip(text, room, from_left=style == "path", dots=dots)
        lines.append(head + (f'"{body}"' if style == "quote" else body))
    return lines

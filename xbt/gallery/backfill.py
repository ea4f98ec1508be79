"""The resumable backfill job: re-embed a gallery's items with the NEW model, a batch at a time, safely.

A gallery folder (``MixedGallery.save``: ``gallery.json``, ``old.safetensors``) gets a
``backfill/`` folder:

- ``manifest.json``: the new model (``ModelRef`` with fingerprint), the planned order of item
  ids, and the committed batches (file, item range, SHA-256 of the file). Only committed batches
  count: the manifest is the record of which items are in the new space.
- ``batch-00000.safetensors``...: ``ids`` (int64 [m]) and ``vectors`` (float32 [m, d_new]),
  with the SHA-256 of those tensors' bytes, the range and the content hashes of its items
  (``folder.item_keys``) in the file's own metadata.
- ``lock``: held (``fcntl.flock``) by the running job; a second job is refused. The kernel drops
  the lock when the process dies, so a killed job never leaves a stale lock.

Each batch is embedded, written to a temporary file and renamed into place (``xbt.io``), and only
then added to the manifest (also written by rename). A crash between the two (killed process,
full disk) leaves a complete batch file the manifest does not list: the next run checks it
against its own checksum and the plan and adopts it instead of embedding it again; anything else
is re-embedded. So a killed job loses nothing, embeds nothing twice, and resumes where it stopped.
A batch file that fails its checksum is refused with the fix (``repair=True`` re-embeds it).
Each item is checked against the content hash the gallery recorded for it before it is embedded:
an item that changed since the build stops the job, and nothing is committed for its batch.

``open_gallery`` loads a folder: the old vectors plus every committed batch (verified, and refused
when the batch was embedded from other items than the gallery's).
``rollback`` sets the backfill aside, so the gallery is all-old again, until ``cutover`` has
dropped the old vectors.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..adapters.config import ModelRef
from ..core.errors import XBTError
from ..core.files import save_tensors, write_json
from ..core.hashing import file_digest
from ..core.names import BACKFILL_DIR
from ..models.embedding import embed_images, embed_texts
from ..models.encoders import as_encoder
from .folder import (
    BATCH_KEYS,
    batch_name,
    check_batch_items,
    check_migration_folder,
    first_difference,
    item_keys,
    keys_from_hex,
    keys_to_hex,
    read_batch,
    read_item_keys,
    tensor_digest,
)
from .mixed import MixedGallery, read_meta
from .planner import budget_count

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1


@contextmanager
def job_lock(folder: Path):
    """Hold ``folder/lock`` exclusively for the block, or refuse: another job is running."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise XBTError(
                f"another backfill job (pid {holder}) holds {folder / 'lock'}; wait for it to finish or stop it"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def check_backfill_inputs(meta: dict, new: Any, items: Sequence[Any], order, batch_size: int) -> np.ndarray | None:
    """Refuse what a backfill of the gallery ``meta`` describes cannot take; the order as int64 [n] (or ``None``).

    The items must be the gallery's (as many), the NEW encoder must give the gallery's new width, the order a
    permutation of its item ids (``planner.plan_order``), the batch size at least 1. Both engines call it.
    """
    n = meta["size"]
    if len(items) != n:
        raise XBTError(f"the gallery has {n} items but {len(items)} were given; pass the items it was built from")
    if new.embed_dim != meta["new_width"]:
        raise XBTError(
            f"the gallery expects {meta['new_width']}-d new vectors but {new.name} gives {new.embed_dim}-d; backfill "
            "with the new model the gallery was built for"
        )
    if batch_size < 1:
        raise XBTError(f"batch_size must be >= 1, got {batch_size}")
    order = None if order is None else np.asarray(order, np.int64)
    if order is not None and sorted(order.tolist()) != list(range(n)):
        raise XBTError(f"order must be a permutation of the gallery's {n} item ids (planner.plan_order gives one)")
    return order


class ManifestUnreadable(XBTError):
    """A backfill manifest that is cut short or damaged (``rollback`` can still set its backfill aside)."""


def read_manifest(gallery_dir: str | Path) -> dict[str, Any] | None:
    """The backfill manifest of a gallery folder, or ``None`` when no backfill has started.

    An unreadable one (``ManifestUnreadable``) names the fix: set the backfill aside (``rollback``) and
    backfill again, or rebuild the gallery in a new folder.
    """
    path = Path(gallery_dir) / BACKFILL_DIR / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError both are
        manifest = exc
    if isinstance(manifest, dict) and manifest.get("format") == MANIFEST_FORMAT:
        missing = [k for k in ("new_model", "order", "batch_size", "batches") if k not in manifest]
        manifest = ValueError(f"it lacks {missing}") if missing else manifest
    if not isinstance(manifest, dict):
        raise ManifestUnreadable(
            f"the backfill manifest {path} is unreadable (truncated or corrupt: {str(manifest)[:120]}); set the "
            f"backfill aside with xbt gallery rollback --gallery {gallery_dir} (xbt.gallery.backfill.rollback) and "
            "backfill again, or build the gallery in a new folder"
        )
    if manifest.get("format") != MANIFEST_FORMAT:
        raise XBTError(f"{path} has format {manifest.get('format')!r}; this xbt reads format {MANIFEST_FORMAT}")
    return manifest


class BackfillJob:
    """Re-embeds a gallery's items with the new model in planned order; resumable, one job at a time.

    Args:
        gallery_dir: a folder written by ``MixedGallery.save``.
        new: the NEW model (``CLIPEncoder`` or raw model); it must match a started backfill's.
        items: the gallery's items by id (texts, or PIL images), the same ones the old vectors embed.
        order: int item ids, most useful first (``planner.plan_order``); fixed by the first run,
            later runs may omit it (given again, it must be the same).
        batch_size: items per batch file (fixed by the first run).
    """

    def __init__(
        self,
        gallery_dir: str | Path,
        new: Any,
        items: Sequence[Any],
        order: Sequence[int] | None = None,
        batch_size: int = 256,
        plan: str = "given",
    ) -> None:
        self.gallery_dir = Path(gallery_dir)
        self.meta = read_meta(self.gallery_dir)
        self.new = as_encoder(new)
        self.items, self.folder = items, self.gallery_dir / BACKFILL_DIR
        n = self.meta["size"]
        self.order = check_backfill_inputs(self.meta, self.new, items, order, batch_size)
        self.batch_size, self.plan = int(batch_size), plan
        #: uint8 [n, 12]: the content hashes recorded at build time (``None``: a gallery saved before them)
        self.recorded = read_item_keys(self.gallery_dir)
        if self.recorded is not None and len(self.recorded) != n:
            raise XBTError(
                f"{self.gallery_dir} records {len(self.recorded)} item hashes for {n} items; rebuild the gallery"
            )

    def _start(self) -> dict[str, Any]:
        manifest = read_manifest(self.gallery_dir)
        ref = ModelRef.of(self.new)
        if manifest is None:
            order = self.order if self.order is not None else np.arange(self.meta["size"])
            manifest = {
                "format": MANIFEST_FORMAT,
                "new_model": asdict(ref),
                "plan": self.plan,
                "batch_size": self.batch_size,
                "order": order.tolist(),
                "batches": [],
                "cutover": False,
            }
            write_json(self.folder / MANIFEST, manifest)
            return manifest
        if manifest["new_model"].get("fingerprint") != ref.fingerprint:
            raise XBTError(
                f"this backfill was started with new model {manifest['new_model']['name']!r} (fingerprint "
                f"{manifest['new_model']['fingerprint']}), not {self.new.name} ({ref.fingerprint}); resume with "
                "that model, or roll the backfill back first"
            )
        if self.order is not None and self.order.tolist() != manifest["order"]:
            raise XBTError(
                "this backfill was started with another order; resume without an order (or with the same one), "
                "or roll it back to plan anew"
            )
        return manifest

    def _checked_keys(self, ids: np.ndarray) -> np.ndarray:
        """The content hashes [m, 12] of items ``ids`` as given, refused where they differ from the recorded ones."""
        keys = item_keys([self.items[int(i)] for i in ids], self.meta["modality"])
        if self.recorded is not None:
            j = first_difference(self.recorded[ids], keys)
            if j is not None:
                what = "image (its pixels, size or mode)" if self.meta["modality"] == "image" else "caption text"
                raise XBTError(
                    f"item {int(ids[j])} has changed since the gallery {self.gallery_dir} was built: its {what} "
                    f"hashes to {keys[j].tobytes().hex()}, the gallery recorded "
                    f"{self.recorded[ids[j]].tobytes().hex()}"
                    f"; nothing was committed for this batch. Give the items the gallery was built from, or build "
                    f"the gallery from the new items into a new folder (or roll its backfill back first: xbt gallery "
                    f"rollback --gallery {self.gallery_dir})"
                )
        return keys

    def _embed(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(new vectors [m, d_new], content hashes [m, 12])`` of items ``ids``, each checked before embedding."""
        keys = self._checked_keys(ids)
        batch = [self.items[int(i)] for i in ids]
        fn = embed_images if self.meta["modality"] == "image" else embed_texts
        vectors = fn(self.new, batch, batch_size=len(batch), cache=False, verbose=False).numpy().astype(np.float32)
        return vectors, keys

    def _write_batch(self, index: int, start: int, ids: np.ndarray, embedded: tuple[np.ndarray, np.ndarray]) -> Path:
        path = self.folder / batch_name(index)
        vectors, keys = embedded
        meta = {
            "sha256": tensor_digest(ids, vectors),
            "start": str(start),
            "new_fingerprint": str(self.new.fingerprint),
            BATCH_KEYS: keys_to_hex(keys),
        }
        return save_tensors(path, {"ids": torch.from_numpy(ids), "vectors": torch.from_numpy(vectors)}, meta)

    def run(self, budget: float | int = 1.0, repair: bool = False, verbose: bool = True) -> dict[str, int]:
        """Backfill until ``budget`` items (fraction or count of the gallery) are in the new space.

        Returns counts for this run: ``embedded`` (items run through the new model), ``adopted``
        (items of complete batch files a crashed run wrote but did not record), ``repaired``,
        ``done`` (items in the new space now) and ``target``.
        """
        with job_lock(self.folder):
            manifest = self._start()
            n = self.meta["size"]
            target = budget_count(budget, n)
            stats = {"embedded": 0, "adopted": 0, "repaired": 0}
            for entry in manifest["batches"]:
                path = self.folder / entry["file"]
                try:
                    read_batch(path, entry["sha256"])
                except XBTError:
                    if not repair:
                        raise
                    ids = np.asarray(manifest["order"][entry["start"] : entry["start"] + entry["count"]], np.int64)
                    self._write_batch(entry["index"], entry["start"], ids, self._embed(ids))
                    entry["sha256"] = file_digest(path)
                    write_json(self.folder / MANIFEST, manifest)
                    stats["repaired"] += len(ids)
            done = sum(e["count"] for e in manifest["batches"])
            order = np.asarray(manifest["order"], np.int64)
            bar = tqdm(total=target, initial=min(done, target), desc="backfill", unit="item", disable=not verbose)
            while done < target:
                index, count = len(manifest["batches"]), min(manifest["batch_size"], target - done)
                ids = order[done : done + count]
                path = self.folder / batch_name(index)
                adopted = self._adopt(path, ids, done)
                if not adopted:
                    self._write_batch(index, done, ids, self._embed(ids))
                    stats["embedded"] += count
                else:
                    count = adopted
                    stats["adopted"] += count
                manifest["batches"].append(
                    {
                        "index": index,
                        "file": path.name,
                        "start": done,
                        "count": count,
                        "sha256": file_digest(path),
                        "time": round(time.time(), 3),
                    }
                )
                write_json(self.folder / MANIFEST, manifest)
                done += count
                bar.update(count)
            bar.close()
        return {**stats, "done": done, "target": target}

    def _adopt(self, path: Path, planned: np.ndarray, start: int) -> int:
        """Items of a complete, unrecorded batch file at ``path`` that matches the plan (0: none, file removed)."""
        if not path.exists():
            return 0
        try:
            ids, _, meta = read_batch(path)
        except XBTError:
            path.unlink()
            return 0
        ok = (
            meta.get("start") == str(start)
            and meta.get("new_fingerprint") == str(self.new.fingerprint)
            and 0 < len(ids) <= len(planned)
            and np.array_equal(ids, planned[: len(ids)])
        )
        keys = self._checked_keys(ids) if ok else None
        if ok and BATCH_KEYS in meta and first_difference(keys_from_hex(meta[BATCH_KEYS]), keys) is not None:
            ok = False  # embedded from other items (a gallery without recorded hashes): embedded again
        if not ok:
            path.unlink()
            return 0
        return len(ids)


def open_gallery(gallery_dir: str | Path, store: str | None = None, store_path: str | None = None) -> MixedGallery:
    """The gallery saved in ``gallery_dir`` with every committed backfill batch applied (each verified)."""
    gallery = MixedGallery.load(gallery_dir, store=store, store_path=store_path)
    manifest = read_manifest(gallery_dir)
    if manifest is None:
        return gallery
    gallery.new_ref = ModelRef.from_dict(manifest["new_model"])
    folder = Path(gallery_dir) / BACKFILL_DIR
    for entry in manifest["batches"]:
        ids, vectors, meta = read_batch(folder / entry["file"], entry["sha256"])
        check_batch_items(gallery.item_keys, gallery.size, folder / entry["file"], ids, meta)
        gallery.set_new(ids, vectors)
    if manifest.get("cutover"):
        gallery.cutover()
    return gallery


def rollback(gallery_dir: str | Path) -> Path | None:
    """Set the backfill aside (renamed ``backfill.rolled-back-<time>``): the gallery is all-old again.

    Refused for a folder that is not a gallery, after cutover and while a job holds the lock. An unreadable
    manifest is set aside too (the old vectors are intact). Returns where the backfill went (``None``: there
    was none, nothing was done).
    """
    check_migration_folder(gallery_dir, "roll back")  # a typo or another kind of folder (a damaged file is fine)
    folder = Path(gallery_dir) / BACKFILL_DIR
    try:
        manifest = read_manifest(gallery_dir)
    except ManifestUnreadable:
        manifest = {}
    if manifest is None:
        return None
    if manifest.get("cutover"):
        raise XBTError(
            f"{gallery_dir} was cut over to the new model; its old vectors are no longer used and it cannot roll back"
        )
    with job_lock(folder):
        aside = folder.with_name(f"{BACKFILL_DIR}.rolled-back-{int(time.time())}")
        os.replace(folder, aside)
    (aside / "lock").unlink(missing_ok=True)
    return aside


def cutover(gallery_dir: str | Path) -> bool:
    """Mark a finished backfill as cut over: searches use the new vectors only and rollback is refused.

    Returns ``False`` when it already was (nothing done); refused for a folder that is not a gallery.
    """
    check_migration_folder(gallery_dir, "cut over")
    size = read_meta(gallery_dir)["size"]
    manifest = read_manifest(gallery_dir)
    folder = Path(gallery_dir) / BACKFILL_DIR
    done = 0 if manifest is None else sum(e["count"] for e in manifest["batches"])
    if done < size:
        raise XBTError(f"{done} of {size} items are backfilled; finish the backfill (budget 1.0) before cutover")
    if manifest.get("cutover"):
        return False
    with job_lock(folder):
        manifest["cutover"] = True
        write_json(folder / MANIFEST, manifest)
    return True

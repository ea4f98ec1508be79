"""``UpgradeJob``: move a stored gallery's OLD vectors into the NEW space with a ``ForwardMap``, resumably.

The gallery's vectors are read from a ``.npy`` file, memory-mapped (``numpy.load(mmap_mode="r")``), a
batch at a time, so memory stays bounded whatever the gallery's size. The output folder holds:

- ``upgraded.npy``: float32 [n, d_new], the upgraded vectors, written in place batch by batch into a
  memory-mapped file made at the start;
- ``states.npy``: uint8 [n], each vector's state (``STATES``: 0 old, 1 upgraded, 2 new);
- ``upgrade.json``: the manifest, written atomically after each batch is flushed to disk: the map's id,
  the models, the source file (size and a digest of its header and first rows), the batches done.

A batch counts only once the manifest records it, so a job killed at any point (``kill -9`` included)
resumes by redoing the unrecorded batches, to the same bytes: the map is deterministic per row. A
second job on a folder whose manifest names another map or source is refused. ``UpgradedVectors``
opens a finished folder and refuses a search through any map but the one that wrote it.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..core.errors import XBTError
from ..core.files import write_json
from ..evaluation.search import block_search
from .map import MODALITIES, ForwardMap

MANIFEST, VECTORS, STATES_FILE = "upgrade.json", "upgraded.npy", "states.npy"
#: a vector's state: still the OLD model's, moved by a forward map, or re-embedded by the NEW model
STATES = {"old": 0, "upgraded": 1, "new": 2}


def _source(path: str | Path, width: int) -> tuple[np.ndarray, dict[str, Any]]:
    """The source vectors, memory-mapped, and how to recognise them again (size, digest of the first rows)."""
    path = Path(path)
    if path.suffix != ".npy" or not path.is_file():
        raise XBTError(f"{path} is not a .npy file; save the gallery's OLD vectors with numpy.save (float32 [n, d])")
    vectors = np.load(path, mmap_mode="r")
    if vectors.ndim != 2 or vectors.shape[1] != width:
        raise XBTError(f"{path} holds {vectors.shape}; the map's old model needs [n, {width}]")
    head = np.ascontiguousarray(vectors[:1024], dtype=np.float32)
    digest = hashlib.sha256(head.tobytes()).hexdigest()[:16]
    return vectors, {"file": str(path.resolve()), "shape": list(vectors.shape), "head_digest": digest}


class UpgradeJob:
    """Upgrade the OLD vectors in ``source`` (a ``.npy`` file [n, d_old]) of ``modality`` into ``folder``."""

    def __init__(
        self, folder: str | Path, source: str | Path, fmap: ForwardMap, modality: str, batch_size: int = 65_536
    ) -> None:
        if modality not in MODALITIES:
            raise XBTError(f"gallery vectors are 'text' or 'image', got {modality!r}")
        if batch_size < 1:
            raise XBTError(f"batch_size must be >= 1, got {batch_size}")
        self.folder, self.fmap, self.modality, self.batch_size = Path(folder), fmap, modality, int(batch_size)
        self.vectors, self.source = _source(source, fmap.old_ref.embed_dim)

    def _manifest(self) -> dict[str, Any]:
        path = self.folder / MANIFEST
        fresh = {
            "map_id": self.fmap.map_id,
            "old_model": self.fmap.old_ref.label,
            "new_model": self.fmap.new_ref.label,
            "modality": self.modality,
            "source": self.source,
            "batch_size": self.batch_size,
            "done": [],
        }
        if not path.is_file():
            return fresh
        manifest = json.loads(path.read_text())
        for key in ("map_id", "modality", "source", "batch_size"):
            if manifest.get(key) != fresh[key]:
                raise XBTError(
                    f"{self.folder} holds an upgrade with another {key} ({manifest.get(key)!r}, not {fresh[key]!r}); "
                    "resume it with the same map, vectors and batch size, or upgrade into a new folder"
                )
        return manifest

    def run(self, verbose: bool = True) -> dict[str, Any]:
        """Upgrade every batch not yet recorded; returns the manifest (with ``vectors_per_second`` of this run)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        manifest = self._manifest()
        n, d_new = len(self.vectors), self.fmap.new_ref.embed_dim
        out, states = self._arrays(n, d_new, fresh=not manifest["done"])
        done = set(manifest["done"])
        todo = [b for b in range(0, n, self.batch_size) if b not in done]
        t0, moved = time.perf_counter(), 0
        for start in tqdm(todo, desc="upgrading gallery vectors", unit="batch", disable=not verbose):
            stop = min(start + self.batch_size, n)
            x = torch.from_numpy(np.array(self.vectors[start:stop], dtype=np.float32))  # a copy: the map reads it
            out[start:stop] = self.fmap.upgrade(x, self.modality).numpy()
            states[start:stop] = STATES["upgraded"]
            out.flush()
            states.flush()  # on disk before the manifest says so
            manifest["done"] = sorted(done | {start})
            done.add(start)
            write_json(self.folder / MANIFEST, manifest)
            moved += stop - start
        seconds = time.perf_counter() - t0
        manifest["complete"] = len(done) == len(range(0, n, self.batch_size))
        write_json(self.folder / MANIFEST, manifest)
        return {**manifest, "vectors_per_second": moved / seconds if seconds > 0 and moved else None}

    def _arrays(self, n: int, d_new: int, fresh: bool) -> tuple[np.memmap, np.memmap]:
        paths = self.folder / VECTORS, self.folder / STATES_FILE
        if fresh or not all(p.is_file() for p in paths):
            vec = np.lib.format.open_memmap(paths[0], mode="w+", dtype=np.float32, shape=(n, d_new))
            st = np.lib.format.open_memmap(paths[1], mode="w+", dtype=np.uint8, shape=(n,))
            return vec, st
        return np.load(paths[0], mmap_mode="r+"), np.load(paths[1], mmap_mode="r+")


class UpgradedVectors:
    """A finished upgrade folder as a searchable gallery in migration: one space, items in three states.

    Every item starts ``"upgraded"`` (its OLD vector moved by the map); ``set_new`` puts the NEW model's own vector
    of re-embedded items in their place (state ``"new"``, in memory: the file stays the map's output). Upgraded
    and new items share the NEW space, so the bare new model's queries search them together, with no calibration
    between two spaces; a search through any map but the one that wrote the folder is refused.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        if not (self.folder / MANIFEST).is_file():
            raise XBTError(f"{self.folder} holds no upgrade ({MANIFEST}); run xbt gallery upgrade into it")
        self.manifest = json.loads((self.folder / MANIFEST).read_text())
        if not self.manifest.get("complete"):
            raise XBTError(f"the upgrade in {self.folder} is not complete; run it again to resume it")
        self.vectors = np.load(self.folder / VECTORS, mmap_mode="c")  # copy-on-write: set_new never writes the file
        self.states = np.load(self.folder / STATES_FILE, mmap_mode="c")

    @property
    def map_id(self) -> str:
        return self.manifest["map_id"]

    def counts(self) -> dict[str, int]:
        """How many items are in each state."""
        return {name: int((self.states == code).sum()) for name, code in STATES.items()}

    def set_new(self, ids, vectors) -> None:
        """Put the NEW model's vectors [m, d_new] of re-embedded items ``ids`` in place of their upgraded ones."""
        ids, vectors = np.asarray(ids, dtype=np.int64), np.asarray(vectors, dtype=np.float32)
        if vectors.shape != (len(ids), self.vectors.shape[1]):
            raise XBTError(f"give one {self.vectors.shape[1]}-d new vector per id, got {vectors.shape} for {len(ids)}")
        self.vectors[ids] = vectors
        self.states[ids] = STATES["new"]

    def check_map(self, fmap: ForwardMap) -> None:
        """Refuse a map other than the one that upgraded these vectors (their space is that map's)."""
        if fmap.map_id != self.map_id:
            raise XBTError(
                f"these vectors were upgraded by forward map {self.map_id}, not {fmap.map_id}; search them with the "
                "map that upgraded them, or upgrade the gallery again with this one"
            )

    def search(self, new_queries: torch.Tensor, fmap: ForwardMap, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, ids) of the bare NEW model's queries [n_q, d_new] among every item, one space."""
        self.check_map(fmap)
        return block_search(np.asarray(new_queries, dtype=np.float32), self.vectors, k)

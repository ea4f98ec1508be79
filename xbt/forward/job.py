"""``UpgradeJob``: move a stored gallery's OLD vectors into the NEW space with a ``ForwardMap``, resumably.

The gallery's vectors are read from a ``.npy`` file a batch at a time at their offsets (``NpyRows``, no
memory map), so memory stays bounded whatever the gallery's size. The output folder holds:

- ``upgraded.npy``: float32 [n, d_new], the upgraded vectors, written in place batch by batch into a
  ``.npy`` file made (sparse) at the start;
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


class NpyRows:
    """Rows of a ``.npy`` file read or written at their offsets with plain file calls.

    Nothing is memory-mapped, so only the batch in hand is resident in the process (a mapped file's touched
    pages would count in its memory until the end); the page cache does the rest. ``mode``: ``"rb"`` or ``"r+b"``.
    """

    def __init__(self, path: str | Path, mode: str = "rb") -> None:
        self.path, self.file = Path(path), open(path, mode)  # noqa: SIM115 (closed by close())
        version = np.lib.format.read_magic(self.file)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        self.shape, fortran, self.dtype = read(self.file)
        if fortran:
            raise XBTError(f"{path} is stored in Fortran order; save it with numpy.save from a C-ordered array")
        self.offset, self.row = self.file.tell(), int(np.prod(self.shape[1:], dtype=np.int64))

    def read(self, start: int, stop: int) -> np.ndarray:
        self.file.seek(self.offset + start * self.row * self.dtype.itemsize)
        rows = np.fromfile(self.file, dtype=self.dtype, count=(stop - start) * self.row)
        return rows.reshape((stop - start, *self.shape[1:]))

    def write(self, start: int, rows: np.ndarray) -> None:
        self.file.seek(self.offset + start * self.row * self.dtype.itemsize)
        self.file.write(np.ascontiguousarray(rows, dtype=self.dtype).tobytes())

    def close(self) -> None:
        self.file.close()


def _source(path: str | Path, width: int) -> dict[str, Any]:
    """How to recognise the source vectors again (file, shape, digest of the first rows), their shape checked."""
    path = Path(path)
    if path.suffix != ".npy" or not path.is_file():
        raise XBTError(f"{path} is not a .npy file; save the gallery's OLD vectors with numpy.save (float32 [n, d])")
    rows = NpyRows(path)
    if len(rows.shape) != 2 or rows.shape[1] != width:
        raise XBTError(f"{path} holds {rows.shape}; the map's old model needs [n, {width}]")
    head = np.ascontiguousarray(rows.read(0, min(1024, rows.shape[0])), dtype=np.float32)
    rows.close()
    digest = hashlib.sha256(head.tobytes()).hexdigest()[:16]
    return {"file": str(path.resolve()), "shape": list(rows.shape), "head_digest": digest}


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
        self.source = _source(source, fmap.old_ref.embed_dim)

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
        n, d_new = self.source["shape"][0], self.fmap.new_ref.embed_dim
        out, states = self._files(n, d_new, fresh=not manifest["done"])
        src = NpyRows(self.source["file"])
        done = set(manifest["done"])
        todo = [b for b in range(0, n, self.batch_size) if b not in done]
        t0, moved = time.perf_counter(), 0
        for start in tqdm(todo, desc="upgrading gallery vectors", unit="batch", disable=not verbose):
            stop = min(start + self.batch_size, n)
            x = torch.from_numpy(src.read(start, stop).astype(np.float32))
            out.write(start, self.fmap.upgrade(x, self.modality).numpy())
            states.write(start, np.full(stop - start, STATES["upgraded"], np.uint8))
            out.file.flush()
            states.file.flush()  # in the page cache (what outlives a killed process) before the manifest says so
            manifest["done"] = sorted(done | {start})
            done.add(start)
            write_json(self.folder / MANIFEST, manifest)
            moved += stop - start
        seconds = time.perf_counter() - t0
        for f in (out, states, src):
            f.close()
        manifest["complete"] = len(done) == len(range(0, n, self.batch_size))
        write_json(self.folder / MANIFEST, manifest)
        return {**manifest, "vectors_per_second": moved / seconds if seconds > 0 and moved else None}

    def _files(self, n: int, d_new: int, fresh: bool) -> tuple[NpyRows, NpyRows]:
        paths = self.folder / VECTORS, self.folder / STATES_FILE
        if fresh or not all(p.is_file() for p in paths):  # headers written, the rest left sparse until filled
            for path, dtype, shape in (
                (paths[0], np.dtype(np.float32), (n, d_new)),
                (paths[1], np.dtype(np.uint8), (n,)),
            ):
                with open(path, "wb") as f:
                    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
                    np.lib.format.write_array_header_1_0(f, header)
                    f.truncate(f.tell() + int(np.prod(shape)) * dtype.itemsize)
        return NpyRows(paths[0], "r+b"), NpyRows(paths[1], "r+b")


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

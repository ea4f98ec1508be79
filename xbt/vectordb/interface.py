"""Vector stores of a gallery in migration: each item has an OLD vector, and a NEW one once backfilled.

A store holds items ``0..n-1``; each item is *active* in one space: ``"old"`` until its new vector
arrives, ``"new"`` from then on. The old vector of a backfilled item is kept (rollback to all-old
stays possible until cutover, and the merge calibrates on items scored in both spaces); it is just
not searched. ``search(space, queries, k)`` searches only the items active in ``space``.

The stores behind it: ``FaissStore`` (``faiss_index``, the embedded default), ``QdrantStore``
(``qdrant``, embedded Qdrant) and ``LanceStore`` (``lance``, a versioned LanceDB table); ``make_store``
(``registry``) picks one by name.
"""

from __future__ import annotations

import numpy as np
import torch

from ..core.errors import XBTError

SPACES = ("old", "new")


def as_vectors(x, width: int, what: str) -> np.ndarray:
    """``x`` as a C-contiguous float32 [n, width] array with finite rows, or an ``XBTError``."""
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    arr = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if arr.ndim != 2 or arr.shape[1] != width:
        raise XBTError(
            f"{what} must be [n, {width}] float vectors, got shape {arr.shape}; embed with the model of that space"
        )
    if not np.isfinite(arr).all():
        raise XBTError(f"{what} hold NaN or inf values; check the model and its inputs")
    return arr


def check_space(space: str) -> str:
    """``space`` if it is ``"old"`` or ``"new"``, else an ``XBTError``."""
    if space not in SPACES:
        raise XBTError(f"unknown space {space!r}; use 'old' or 'new'")
    return space


class VectorStore:
    """The interface (and shared bookkeeping) of a migration store; subclasses hold the vectors.

    Attributes:
        widths: space -> embedding width (``{"old": d_old, "new": d_new}``).
        in_new: bool [n]: the item is active in the new space.
        has_old: whether old vectors are still held (False after cutover).
    """

    kind = "base"

    def __init__(self, d_old: int, d_new: int) -> None:
        self.widths = {"old": int(d_old), "new": int(d_new)}
        self.in_new = np.zeros(0, bool)
        self.has_old = True

    @property
    def size(self) -> int:
        """Number of items."""
        return len(self.in_new)

    def _ids(self, ids, what: str = "ids") -> np.ndarray:
        arr = np.asarray(ids, dtype=np.int64).reshape(-1)
        if arr.size and (arr.min() < 0 or arr.max() >= self.size):
            raise XBTError(
                f"{what} must be item ids in 0..{self.size - 1}, got values from {arr.min()} to {arr.max()}"
            )
        return arr

    # -- subclasses implement these five
    def _put(self, space: str, ids: np.ndarray, vectors: np.ndarray) -> None:
        raise NotImplementedError

    def _drop(self, space: str, ids: np.ndarray) -> None:
        raise NotImplementedError

    def _mark(self, ids: np.ndarray, space: str) -> None:
        """Make ``ids`` active in ``space`` (bookkeeping a subclass mirrors, e.g. as a payload)."""

    def vectors(self, space: str, ids) -> np.ndarray:
        """float32 [len(ids), d_space]: the stored vectors of ``ids`` in ``space``."""
        raise NotImplementedError

    def _search(self, space: str, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    # -- the public operations
    def add_old(self, vectors) -> np.ndarray:
        """Append items with their OLD vectors [m, d_old]; returns their ids (active in the old space)."""
        if not self.has_old:
            raise XBTError("this gallery was cut over to the new model; add items with their new vectors instead")
        arr = as_vectors(vectors, self.widths["old"], "old vectors")
        ids = np.arange(self.size, self.size + len(arr), dtype=np.int64)
        self.in_new = np.concatenate([self.in_new, np.zeros(len(arr), bool)])
        self._put("old", ids, arr)
        self._mark(ids, "old")
        return ids

    def set_new(self, ids, vectors) -> None:
        """Store NEW vectors [m, d_new] of items ``ids`` and make them active in the new space."""
        ids = self._ids(ids)
        arr = as_vectors(vectors, self.widths["new"], "new vectors")
        if len(arr) != len(ids):
            raise XBTError(f"{len(ids)} ids but {len(arr)} new vectors; give one vector per id")
        self._put("new", ids, arr)
        self.in_new[ids] = True
        self._mark(ids, "new")

    def rollback(self) -> None:
        """Drop every new vector: all items active in the old space again (refused after cutover)."""
        if not self.has_old:
            raise XBTError("this gallery was cut over: its old vectors are gone, so it cannot roll back")
        ids = np.flatnonzero(self.in_new)
        self._drop("new", ids)
        self.in_new[:] = False
        self._mark(ids, "old")

    def cutover(self) -> None:
        """Drop the old vectors once every item is backfilled (rollback is impossible afterwards)."""
        if not self.in_new.all():
            raise XBTError(
                f"{int((~self.in_new).sum())} of {self.size} items are not backfilled yet; finish the backfill "
                "before cutover"
            )
        self._drop("old", np.arange(self.size))
        self.has_old = False

    def search(self, space: str, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items active in ``space``: ``(scores, ids)`` float32 / int64 [n_q, k].

        Rows are sorted by score (descending), ties by id (ascending); missing slots (fewer than
        ``k`` items in the part) hold score ``-inf`` and id ``-1``.
        """
        check_space(space)
        q = as_vectors(queries, self.widths[space], f"{space}-space queries")
        n_q = q.shape[0]
        members = int(self.in_new.sum()) if space == "new" else int((~self.in_new).sum())
        scores = np.full((n_q, k), -np.inf, np.float32)
        ids = np.full((n_q, k), -1, np.int64)
        if members == 0 or n_q == 0:
            return scores, ids
        kk = min(k, members)
        s, i = self._search(space, q, kk)
        order = np.lexsort((np.where(i < 0, np.iinfo(np.int64).max, i), -s), axis=-1)
        scores[:, :kk], ids[:, :kk] = np.take_along_axis(s, order, 1), np.take_along_axis(i, order, 1)
        return scores, ids

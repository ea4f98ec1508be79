"""``FaissStore``: the embedded default store, numpy arrays plus one exact FAISS inner-product index per space.

Each space's index covers its active items and is rebuilt lazily after a change (the vectors are unit
rows, so inner product is the cosine).
"""

from __future__ import annotations

import numpy as np

from ..core.errors import XBTError
from .interface import SPACES, VectorStore, check_space


class FaissStore(VectorStore):
    """The embedded default: vectors in numpy, one FAISS ``IndexFlatIP`` per space over its active items."""

    kind = "faiss"

    def __init__(self, d_old: int, d_new: int) -> None:
        super().__init__(d_old, d_new)
        self._vec = {s: np.zeros((0, self.widths[s]), np.float32) for s in SPACES}
        self._index: dict[str, tuple] = {}

    def _put(self, space: str, ids: np.ndarray, vectors: np.ndarray) -> None:
        store = self._vec[space]
        if store.shape[0] < self.size:
            store = np.concatenate([store, np.zeros((self.size - store.shape[0], store.shape[1]), np.float32)])
        store[ids] = vectors
        self._vec[space] = store
        self._index.clear()

    def _drop(self, space: str, ids: np.ndarray) -> None:
        if self._vec[space].shape[0]:
            self._vec[space][ids] = 0.0
        if space == "old" and len(ids) == self.size:
            self._vec["old"] = np.zeros((0, self.widths["old"]), np.float32)
        self._index.clear()

    def vectors(self, space: str, ids) -> np.ndarray:
        ids = self._ids(ids)
        if space == "old" and not self.has_old:
            raise XBTError("this gallery was cut over: it holds no old vectors")
        store = self._vec[check_space(space)]
        if store.shape[0] < self.size:
            store = np.concatenate([store, np.zeros((self.size - store.shape[0], store.shape[1]), np.float32)])
        return store[ids]

    def _search(self, space: str, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        if space not in self._index:
            members = np.flatnonzero(self.in_new if space == "new" else ~self.in_new)
            index = faiss.IndexFlatIP(self.widths[space])
            index.add(np.ascontiguousarray(self._vec[space][members]))
            self._index[space] = (index, members)
        index, members = self._index[space]
        s, local = index.search(queries, k)
        return s, np.where(local >= 0, members[np.clip(local, 0, None)], -1)

"""The migration store on a real vector database: Qdrant, embedded in-process, named vectors per point.

Qdrant's migration pattern: one collection, one point per gallery item, two named vectors per
point, ``"old"`` and ``"new"`` (dot product; xbt's vectors are unit rows, so this is the cosine
FAISS computes). A point gets its ``"new"`` vector when the item is backfilled; a payload field
``space`` says which named vector is searched for it, and every search filters on it, so the old
part and the new part are searched separately. Rollback deletes the ``"new"`` vectors; cutover the
``"old"`` ones.

The client runs embedded (``QdrantClient(":memory:")``, or ``path=`` for an on-disk local
collection): no server. The gallery folder stays the record of the vectors and their spaces; the
collection is (re)built from it when a gallery is opened with ``store="qdrant"``. qdrant-client is an optional
extra: ``pip install "xbt[qdrant]"``.
"""

from __future__ import annotations

import numpy as np

from ..core.errors import XBTError
from .interface import SPACES, VectorStore, check_space

COLLECTION = "xbt_gallery"
_BATCH = 1024


def _models():
    try:
        from qdrant_client import QdrantClient, models
    except ImportError as exc:  # pragma: no cover - the extra is installed in development
        raise XBTError("the qdrant store needs qdrant-client: pip install 'xbt[qdrant]'") from exc
    return QdrantClient, models


class QdrantStore(VectorStore):
    """``VectorStore`` over an embedded Qdrant collection with ``"old"`` and ``"new"`` named vectors.

    Args:
        d_old, d_new: the widths of the two spaces.
        path: a folder for an on-disk local collection; ``None`` keeps it in memory.
    """

    kind = "qdrant"

    def __init__(self, d_old: int, d_new: int, path: str | None = None) -> None:
        super().__init__(d_old, d_new)
        client_cls, self._m = _models()
        self.client = client_cls(path=str(path)) if path else client_cls(":memory:")
        if self.client.collection_exists(COLLECTION):
            self.client.delete_collection(COLLECTION)
        self.client.create_collection(
            COLLECTION,
            vectors_config={
                s: self._m.VectorParams(size=self.widths[s], distance=self._m.Distance.DOT) for s in SPACES
            },
        )

    def _put(self, space: str, ids: np.ndarray, vectors: np.ndarray) -> None:
        m = self._m
        for s in range(0, len(ids), _BATCH):
            chunk, vecs = ids[s : s + _BATCH], vectors[s : s + _BATCH]
            if space == "old":
                self.client.upsert(
                    COLLECTION,
                    points=[
                        m.PointStruct(id=int(i), vector={"old": v.tolist()}, payload={"space": "old"})
                        for i, v in zip(chunk, vecs)
                    ],
                )
            else:
                self.client.update_vectors(
                    COLLECTION,
                    points=[m.PointVectors(id=int(i), vector={"new": v.tolist()}) for i, v in zip(chunk, vecs)],
                )

    def _drop(self, space: str, ids: np.ndarray) -> None:
        for s in range(0, len(ids), _BATCH):
            self.client.delete_vectors(COLLECTION, vectors=[space], points=[int(i) for i in ids[s : s + _BATCH]])

    def _mark(self, ids: np.ndarray, space: str) -> None:
        for s in range(0, len(ids), _BATCH):
            self.client.set_payload(COLLECTION, payload={"space": space}, points=[int(i) for i in ids[s : s + _BATCH]])

    def vectors(self, space: str, ids) -> np.ndarray:
        ids = self._ids(ids)
        check_space(space)
        out = np.zeros((len(ids), self.widths[space]), np.float32)
        for s in range(0, len(ids), _BATCH):
            points = self.client.retrieve(COLLECTION, ids=[int(i) for i in ids[s : s + _BATCH]], with_vectors=[space])
            got = {p.id: p.vector.get(space) for p in points}
            for j, i in enumerate(ids[s : s + _BATCH]):
                if got.get(int(i)) is None:
                    raise XBTError(f"item {int(i)} has no {space!r} vector in the Qdrant collection")
                out[s + j] = got[int(i)]
        return out

    def _search(self, space: str, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        m = self._m
        where = m.Filter(must=[m.FieldCondition(key="space", match=m.MatchValue(value=space))])
        scores = np.full((len(queries), k), -np.inf, np.float32)
        ids = np.full((len(queries), k), -1, np.int64)
        for s in range(0, len(queries), 256):
            requests = [
                m.QueryRequest(query=q.tolist(), using=space, filter=where, limit=k) for q in queries[s : s + 256]
            ]
            for row, response in enumerate(self.client.query_batch_points(COLLECTION, requests=requests)):
                for j, point in enumerate(response.points[:k]):
                    scores[s + row, j], ids[s + row, j] = point.score, point.id
        return scores, ids

"""One registry from store name to store class, and ``make_store``, the one place a store is built by name."""

from __future__ import annotations

from pathlib import Path

from ..core.errors import XBTError
from .faiss_index import FaissStore
from .interface import VectorStore
from .lance import LanceStore
from .qdrant import QdrantStore

#: store name -> class; ``path`` persists the two database stores
STORES: dict[str, type[VectorStore]] = {"faiss": FaissStore, "qdrant": QdrantStore, "lancedb": LanceStore}


def make_store(kind: str, d_old: int, d_new: int, path: str | Path | None = None, old_model: str = "") -> VectorStore:
    """A new, empty store by name: ``"faiss"`` (embedded default), ``"qdrant"`` (in-process Qdrant) or
    ``"lancedb"`` (a versioned LanceDB table; ``old_model`` is the fingerprint stamped on its old vectors).

    ``path`` is where a database store keeps its data (``None``: in memory, or a temporary folder); FAISS
    holds its vectors in memory and refuses one.
    """
    if kind not in STORES:
        raise XBTError(f"unknown store {kind!r}; use one of {list(STORES)}")
    if kind == "faiss":
        if path is not None:
            raise XBTError("the faiss store keeps its vectors in memory and takes no path; use qdrant or lancedb")
        return FaissStore(d_old, d_new)
    if kind == "lancedb":
        return LanceStore(d_old, d_new, path=path, old_model=old_model)
    return STORES[kind](d_old, d_new, path=path)

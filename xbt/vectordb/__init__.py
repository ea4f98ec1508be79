"""Vector stores of a gallery in migration: one interface, three engines (FAISS, Qdrant, LanceDB).

Each item has an OLD vector and, once backfilled, a NEW one; a store searches the items active in one
space (``interface.VectorStore``). ``FaissStore`` is the embedded default; ``QdrantStore`` runs Qdrant
in-process; ``LanceStore`` is a versioned LanceDB table (each committed batch a version, rollback a
restore). ``make_store`` picks one by name. Imports ``core`` only: it knows nothing of models, galleries,
adapters, the toy world or the CLI.
"""

from .faiss_index import FaissStore
from .interface import SPACES, VectorStore, as_vectors, check_space
from .lance import LanceStore
from .qdrant import QdrantStore
from .registry import STORES, make_store

__all__ = [
    "SPACES",
    "STORES",
    "FaissStore",
    "LanceStore",
    "QdrantStore",
    "VectorStore",
    "as_vectors",
    "check_space",
    "make_store",
]

"""Backfill past one machine: re-embedding on Ray Data into a versioned LanceDB table, and the adapter's refresh.

``RayBackfill`` (``engine``) runs the re-embedding as Ray Data batches on worker actors and commits each batch
as a LanceDB table version (``vectordb.LanceStore``); ``open_lance_gallery`` searches what it wrote and
``rollback_table`` restores the pre-backfill version. May import ``core``, ``vectordb``, ``models``,
``adapters``, ``method`` and ``gallery``; knows nothing of the toy world or the CLI. Ray and LanceDB are the
``cluster`` extra (``pip install "xbt[cluster]"``); without them the single-process ``gallery.BackfillJob``
is the path.
"""

from .engine import RayBackfill, open_lance_gallery, rollback_table

__all__ = ["RayBackfill", "open_lance_gallery", "rollback_table"]

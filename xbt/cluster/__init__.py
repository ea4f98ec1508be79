"""Backfill past one machine: re-embedding on Ray Data into a versioned LanceDB table, and the adapter's refresh.

``RayBackfill`` (``engine``) runs the re-embedding as Ray Data batches on worker actors and commits each batch
as a LanceDB table version (``vectordb.LanceStore``); ``open_lance_gallery`` searches what it wrote and
``rollback_table`` restores the pre-backfill version. ``refresh_adapter`` (``refresh``) teaches the adapter's
query head from the re-embedded items, for the part not re-embedded yet. May import ``core``, ``vectordb``, ``models``,
``adapters``, ``method`` and ``gallery``; knows nothing of the toy world or the CLI. Ray and LanceDB are the
``cluster`` extra (``pip install "xbt[cluster]"``); without them the single-process ``gallery.BackfillJob``
is the path.
"""

from .engine import RayBackfill, open_lance_gallery, rollback_table
from .refresh import RefreshConfig, refresh_adapter

__all__ = ["RayBackfill", "RefreshConfig", "open_lance_gallery", "refresh_adapter", "rollback_table"]

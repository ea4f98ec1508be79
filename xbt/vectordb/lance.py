"""``LanceStore``: the migration store as a versioned LanceDB table, one row per gallery item.

Columns: ``id`` (int64), ``old`` (float32 [d_old], dropped at cutover), ``new`` (float32 [d_new], null
until backfilled), ``space`` (``"old"`` or ``"new"``: which vector is searched), and the model stamp of
each vector, ``old_model`` and ``new_model`` (``ModelRef`` fingerprints; ``new_model`` null until
backfilled). The table's schema metadata ``xbt`` holds the widths and the stamps of the two models, and
the tag ``pre-backfill`` names the table version that holds the old vectors only.

Every write is one LanceDB commit, so one table version: adding old vectors, each backfilled batch
(``set_new`` writes the vectors, the space and the stamp in one ``merge_insert``), cutover. Before the
first batch the current version is tagged ``pre-backfill``; rollback is ``Table.restore`` to it: the
table is then exactly what it was before the first batch (as a new version, so the backfill stays
readable in the history until old versions are cleaned up).

Searches are LanceDB's exhaustive k-NN on the space's column with ``metric("dot")`` and a prefilter on
``space``: no ANN index, so they are exact, as FAISS flat is (xbt's vectors are unit rows, so the dot
product is the cosine). lancedb is an optional extra: ``pip install "xbt[cluster]"``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from ..core.errors import XBTError
from .interface import VectorStore, check_space

TABLE = "xbt_gallery"
META_KEY = b"xbt"
PRE_BACKFILL = "pre-backfill"


def require_lancedb():
    try:
        import lancedb
        import pyarrow as pa
    except ImportError as exc:  # pragma: no cover - the extra is installed in development
        raise XBTError("the lancedb store needs lancedb: pip install 'xbt[cluster]'") from exc
    return lancedb, pa


def has_table(db) -> bool:
    """Whether the database holds the gallery table (``list_tables`` pages; one page is plenty here)."""
    return TABLE in db.list_tables(limit=1000).tables


def _column(pa, vectors: np.ndarray, width: int):
    """float32 [m, width] as an Arrow fixed-size-list column (LanceDB's vector type)."""
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(vectors, np.float32).reshape(-1)), width)


class LanceStore(VectorStore):
    """``VectorStore`` over a LanceDB table; each write a table version (module docstring).

    Args:
        d_old, d_new: the widths of the two spaces.
        path: the LanceDB database folder (``lancedb.connect``); ``None`` uses a temporary one.
        old_model, new_model: fingerprints stamped on each row's vectors and in the table metadata.
        reset: drop a table already in ``path`` (a gallery rebuilt from its folder), refused where the table
            holds a backfill; ``LanceStore.open`` reads one instead.
    """

    kind = "lancedb"

    def __init__(
        self,
        d_old: int,
        d_new: int,
        path: str | Path | None = None,
        old_model: str = "",
        new_model: str = "",
        reset: bool = True,
    ) -> None:
        super().__init__(d_old, d_new)
        lancedb, self._pa = require_lancedb()
        self._tmp = None if path else tempfile.TemporaryDirectory(prefix="xbt-lancedb-")
        self.path = Path(path or self._tmp.name)
        self.db = lancedb.connect(str(self.path))
        self.stamps = {"old_model": str(old_model), "new_model": str(new_model)}
        self._cache: tuple[int, str, np.ndarray, np.ndarray] | None = None
        if has_table(self.db) and not reset:
            self.table = self.db.open_table(TABLE)
            meta = self.metadata
            if [meta["old_width"], meta["new_width"]] != [self.widths["old"], self.widths["new"]]:
                raise XBTError(
                    f"the LanceDB table in {self.path} holds {meta['old_width']}-d old and {meta['new_width']}-d new "
                    f"vectors, not {d_old}-d and {d_new}-d; open it with the models it was built for"
                )
            self.stamps = {k: meta[k] for k in self.stamps}
            ids, space = self._columns("space")
            if not np.array_equal(ids, np.arange(len(ids))):
                raise XBTError(f"the LanceDB table in {self.path} does not hold items 0..n-1; rebuild it")
            self.in_new = np.asarray(space) == "new"
            self.has_old = "old" in self.table.schema.names
            return
        if has_table(self.db):  # a gallery rebuilt from its folder; a table holding a backfill is never dropped
            if PRE_BACKFILL in self.db.open_table(TABLE).tags.list():
                raise XBTError(
                    f"the LanceDB table in {self.path} holds a backfill; open it (LanceStore.open, "
                    "xbt.cluster.open_lance_gallery, xbt gallery search --store lancedb) or give another path"
                )
            self.db.drop_table(TABLE)
        pa = self._pa
        schema = pa.schema(
            [
                pa.field("id", pa.int64()),
                pa.field("old", pa.list_(pa.float32(), self.widths["old"])),
                pa.field("new", pa.list_(pa.float32(), self.widths["new"])),
                pa.field("space", pa.string()),
                pa.field("old_model", pa.string()),
                pa.field("new_model", pa.string()),
            ],
            metadata={META_KEY: json.dumps(self._meta()).encode()},
        )
        self.table = self.db.create_table(TABLE, schema=schema)

    @classmethod
    def open(cls, path: str | Path, d_old: int, d_new: int) -> LanceStore:
        """The store already in ``path`` (refused when there is none, or for other widths)."""
        lancedb, _ = require_lancedb()
        if not has_table(lancedb.connect(str(path))):
            raise XBTError(f"{path} holds no xbt gallery table ({TABLE!r}); build the gallery into it first")
        return cls(d_old, d_new, path=path, reset=False)

    def _meta(self) -> dict:
        return {"old_width": self.widths["old"], "new_width": self.widths["new"], **self.stamps}

    @property
    def metadata(self) -> dict:
        """The table's ``xbt`` metadata: the widths and the two models' stamps."""
        return json.loads(self.table.schema.metadata[META_KEY])

    @property
    def version(self) -> int:
        """The table's current version."""
        return int(self.table.version)

    @property
    def pre_backfill_version(self) -> int | None:
        """The version tagged ``pre-backfill`` (the old vectors only), ``None`` before the first batch."""
        tag = self.table.tags.list().get(PRE_BACKFILL)
        return None if tag is None else int(tag["version"])

    def _columns(self, column: str) -> tuple[np.ndarray, list]:
        """``(ids sorted, the column's values in that order)`` at the current version, cached per version."""
        key = (self.version, column)
        if self._cache is None or self._cache[:2] != key:
            t = self.table.to_arrow().select(["id", column]).sort_by("id")
            values = t.column(column)
            if column in ("old", "new"):
                width = self.widths[column]
                flat = values.combine_chunks()
                mat = np.zeros((len(t), width), np.float32)
                valid = np.asarray(flat.is_valid())
                if valid.any():
                    mat[valid] = np.asarray(flat.filter(flat.is_valid()).flatten(), np.float32).reshape(-1, width)
                values = mat
            else:
                values = values.to_pylist()
            self._cache = (*key, np.asarray(t.column("id")), values)
        return self._cache[2], self._cache[3]

    def add_old(self, vectors) -> np.ndarray:
        """``VectorStore.add_old``, refused while a backfill runs (its rollback would lose the new items)."""
        if self.in_new.any() and self.pre_backfill_version is not None:
            raise XBTError(
                "items cannot join a LanceDB gallery while its backfill runs: rollback restores the pre-backfill "
                "version, which would lose them; add them before the backfill starts, or roll it back first"
            )
        return super().add_old(vectors)

    def _put(self, space: str, ids: np.ndarray, vectors: np.ndarray) -> None:
        pa = self._pa
        if space == "old":  # new items: appended, active in the old space
            tag = self.pre_backfill_version
            self.table.add(
                pa.table(
                    {
                        "id": pa.array(ids, pa.int64()),
                        "old": _column(pa, vectors, self.widths["old"]),
                        "new": pa.nulls(len(ids), pa.list_(pa.float32(), self.widths["new"])),
                        "space": pa.array(["old"] * len(ids)),
                        "old_model": pa.array([self.stamps["old_model"]] * len(ids)),
                        "new_model": pa.nulls(len(ids), pa.string()),
                    },
                    schema=self.table.schema,
                )
            )
            if tag is not None:  # after a rollback: the old-only version now holds these items too
                self.table.tags.update(PRE_BACKFILL, self.version)
            return
        if self.pre_backfill_version is None:
            self.table.tags.create(PRE_BACKFILL, self.version)
        update = pa.table(
            {
                "id": pa.array(ids, pa.int64()),
                "new": _column(pa, vectors, self.widths["new"]),
                "space": pa.array(["new"] * len(ids)),
                "new_model": pa.array([self.stamps["new_model"]] * len(ids)),
            }
        )
        self.table.merge_insert("id").when_matched_update_all().execute(update)  # vectors, space, stamp: one commit

    def _drop(self, space: str, ids: np.ndarray) -> None:
        if space == "old":  # cutover: the old column goes, in one commit
            self.table.drop_columns(["old"])
            return
        raise XBTError("the lancedb store drops new vectors by restoring a version; call rollback()")

    def rollback(self) -> None:
        """Restore the pre-backfill version: every row exactly as it was before the first batch."""
        if not self.has_old:
            raise XBTError("this gallery was cut over: its old vectors are gone, so it cannot roll back")
        version = self.pre_backfill_version
        if version is None:
            return
        self.table.restore(version)
        self.in_new[:] = False
        self._cache = None

    def vectors(self, space: str, ids) -> np.ndarray:
        ids = self._ids(ids)
        check_space(space)
        if space == "old" and not self.has_old:
            raise XBTError("this gallery was cut over: it holds no old vectors")
        _, mat = self._columns(space)
        if space == "new" and not self.in_new[ids].all():
            missing = int(ids[~self.in_new[ids]][0])
            raise XBTError(f"item {missing} has no 'new' vector in the LanceDB table yet; backfill it first")
        return mat[ids]

    def _search(self, space: str, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores = np.full((len(queries), k), -np.inf, np.float32)
        ids = np.full((len(queries), k), -1, np.int64)
        for row, q in enumerate(queries):
            hits = (
                self.table.search(q, vector_column_name=space)
                .metric("dot")
                .where(f"space = '{space}'", prefilter=True)
                .limit(k)
                .select(["id", "_distance"])
                .to_arrow()
            )
            found = np.asarray(hits.column("id"), np.int64)
            # LanceDB gives 1 - q.v as its dot "distance": the scores are recomputed from the stored rows
            _, mat = self._columns(space)
            ids[row, : len(found)] = found
            scores[row, : len(found)] = mat[found] @ q
        return scores, ids

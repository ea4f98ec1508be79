"""A gallery in migration: some items searched with OLD vectors, the backfilled ones with NEW vectors.

``MixedGallery`` records each item's space and the two models (``ModelRef``, with fingerprints), holds the vectors in a
store (``xbt.vectordb``: FAISS by default, Qdrant or LanceDB) and answers a query with both halves of an adapter:

- the re-embedded part is searched with the bare NEW query (``adapter.new``),
- the old part with the adapter's query (new model mapped into the old space), or with the OLD model's own query where
  the adapter's verdict is "not backward compatible" (``use_old_queries``, ``adapters.verdict``), so the curve runs
  from old->old to new->new and never starts below what the user had,
- the two top-k lists are merged on a calibrated score (``calibration``): old-space scores are mapped to the new
  space's scale by a map fitted on image–caption pairs for the gallery's backfilled fraction, normalised per query by
  each part's top scores (optionally also from anchor items scored in both spaces); a backfilled candidate's old
  vector, kept until cutover, adds its mapped old-space score to its new one where the calibration fuses them.

An adapter made for another old model is refused by fingerprint. ``save`` writes the gallery's own files
(``gallery.json``, ``old.safetensors`` with each item's content hash: ``folder``); the backfilled vectors live in the
backfill job's batch files (``gallery.backfill``), so a gallery folder always says which items are in which space.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..adapters.config import ModelRef
from ..adapters.verdict import old_part_queries
from ..core.errors import XBTError
from ..core.files import save_tensors, write_json
from ..core.names import GALLERY_FILE, MIXED_GALLERY, OLD_VECTORS_FILE, STATIC_GALLERY, gallery_kind
from ..vectordb import VectorStore, as_vectors, make_store
from .calibration import MERGES, ScoreCalibration, merge_scores
from .folder import check_save_over_backfill, item_keys, read_meta, read_old_tensors, read_old_vectors

__all__ = ["GALLERY_FORMAT", "ITEM_MODALITIES", "MixedGallery", "read_meta", "read_old_vectors"]

GALLERY_FORMAT = 1
ITEM_MODALITIES = ("image", "text")


#: what ``gallery.json`` must hold for ``MixedGallery.load``
META_KEYS = ("modality", "size", "store", "old_model", "new_width", "calibration", "n_anchors", "items")


class MixedGallery:
    """Items embedded by the OLD model, re-embedded by the NEW one a batch at a time.

    Args:
        old_ref: the old model the gallery vectors came from (its fingerprint guards searches).
        new_width: the new model's embedding width.
        modality: what the items are: ``"image"`` (text queries, T2I) or ``"text"`` (image queries, I2T).
        store: ``"faiss"``, ``"qdrant"``, ``"lancedb"`` (``xbt.vectordb``) or a ``VectorStore``.
        calibration: how old-space scores are put on the new scale (default: the identity, raw cosines).
        new_ref: the new model, once known (the backfill records it).
        n_anchors: at most this many backfilled items are scored in both spaces per query.
        items: a JSON description of where the items come from (the backfill re-reads them).
    """

    def __init__(
        self,
        old_ref: ModelRef,
        new_width: int,
        modality: str,
        store: str | VectorStore = "faiss",
        calibration: ScoreCalibration | None = None,
        new_ref: ModelRef | None = None,
        n_anchors: int = 256,
        items: dict[str, Any] | None = None,
        store_path: str | None = None,
        seed: int = 0,
    ) -> None:
        if modality not in ITEM_MODALITIES:
            raise XBTError(f"gallery items are 'image' or 'text', got {modality!r}")
        if old_ref.embed_dim is None:
            raise XBTError(f"the old model reference {old_ref.label!r} needs its embed_dim")
        self.old_ref, self.new_ref, self.modality = old_ref, new_ref, modality
        self.store = (
            store
            if isinstance(store, VectorStore)
            else make_store(store, old_ref.embed_dim, new_width, store_path, old_model=old_ref.fingerprint or "")
        )
        self.calibration = calibration or ScoreCalibration()
        self.n_anchors, self.items, self.seed = int(n_anchors), dict(items or {}), seed
        self._anchor_cache: tuple | None = None
        #: what the old part is searched with (``verdict.QUERY_PATHS``) and why
        self.old_queries, self.old_queries_reason = "adapter", "the adapter's queries (the default)"
        #: uint8 [n, 12]: each item's content hash (``folder.item_keys``), ``None`` when not known
        self.item_keys: np.ndarray | None = None
        #: which adapter served each ``search_with``: its ``adapter_id``, the queries, the share backfilled then
        self.served: list[dict[str, Any]] = []

    def __repr__(self) -> str:
        return (
            f"MixedGallery({self.size} {self.modality} items, {self.fraction_new:.0%} backfilled, "
            f"store={self.store.kind}, old={self.old_ref.label!r})"
        )

    # ------------------------------------------------------------------ state
    @property
    def size(self) -> int:
        return self.store.size

    @property
    def in_new(self) -> np.ndarray:
        """bool [n]: which items are searched in the new space (a copy)."""
        return self.store.in_new.copy()

    @property
    def fraction_new(self) -> float:
        return float(self.store.in_new.mean()) if self.size else 0.0

    @property
    def reads_old_part_queries(self) -> bool:
        """Whether a search needs old-part queries: an item is still old, or the fusion at 100 % reads their scores."""
        return self.fraction_new < 1 or self.calibration.fuse_at(1.0) > 0

    @property
    def query_modality(self) -> str:
        return "text" if self.modality == "image" else "image"

    def add_old(self, vectors, items: Sequence[Any] | None = None) -> np.ndarray:
        """Append items by their old vectors [m, d_old]; returns their ids.

        ``items`` (the texts or PIL images the vectors embed) records each one's content hash, so the
        backfill and ``open_gallery`` refuse new vectors made from other items; give them on every call or none.
        """
        keys = None if items is None else item_keys(items, self.modality)
        if keys is not None and len(keys) != len(vectors):
            raise XBTError(f"{len(vectors)} old vectors but {len(keys)} items; give the items the vectors embed")
        if self.size and (keys is None) != (self.item_keys is None):
            raise XBTError(
                "some of this gallery's items were added with their items and some without; give items= to every "
                "add_old call (or to none)"
            )
        self._anchor_cache = None
        ids = self.store.add_old(vectors)
        if keys is not None:
            self.item_keys = keys if self.item_keys is None else np.concatenate([self.item_keys, keys])
        return ids

    def set_new(self, ids, vectors) -> None:
        """Record the new vectors [m, d_new] of backfilled items ``ids``."""
        self._anchor_cache = None
        self.store.set_new(ids, vectors)

    def rollback(self) -> None:
        """Back to all-old (possible until cutover)."""
        self._anchor_cache = None
        self.store.rollback()

    def cutover(self) -> None:
        """Drop the old vectors once every item is backfilled."""
        self._anchor_cache = None
        self.store.cutover()

    # ------------------------------------------------------------------ checks
    def check_adapter(self, adapter: Any, check_fingerprint: bool = True) -> None:
        """Refuse an adapter made for another old (or new) model than this gallery's, by fingerprint."""
        old_fp, mine = getattr(adapter.old_ref, "fingerprint", None), self.old_ref.fingerprint
        if adapter.embed_dim != self.old_ref.embed_dim:
            raise XBTError(
                f"the adapter maps into {adapter.embed_dim}-d but the gallery's old model {self.old_ref.label!r} is "
                f"{self.old_ref.embed_dim}-d; use an adapter fitted for this gallery's old model"
            )
        if check_fingerprint and old_fp != mine:
            raise XBTError(
                f"the adapter was fitted for old model {adapter.old_ref.label!r} (fingerprint {old_fp}) but this "
                f"gallery was embedded by {self.old_ref.label!r} (fingerprint {mine}); use an adapter fitted "
                "for the gallery's old model"
            )
        if self.new_ref is not None:
            if adapter.new.embed_dim != self.store.widths["new"]:
                raise XBTError(
                    f"the adapter's new model is {adapter.new.embed_dim}-d but the gallery's new vectors are "
                    f"{self.store.widths['new']}-d; use the new model the backfill ran with"
                )
            if check_fingerprint and self.new_ref.fingerprint and adapter.new.fingerprint != self.new_ref.fingerprint:
                raise XBTError(
                    f"the adapter's new model (fingerprint {adapter.new.fingerprint}) is not the one this gallery "
                    f"was backfilled with ({self.new_ref.label!r}, fingerprint {self.new_ref.fingerprint}); "
                    "query with that new model"
                )

    def use_old_queries(self, adapter: Any, force: str | None = None, verdict: Any = None) -> str:
        """Decide what the old part is searched with from ``adapter``'s verdict, or ``verdict`` measured on pairs
        laid out as this gallery is (``verdict.old_part_queries``; ``force``: ``"old model"`` or ``"adapter"``);
        returns the reason, also kept in ``gallery.json``."""
        self.old_queries, self.old_queries_reason = old_part_queries(
            adapter.training, self.query_modality, force, verdict
        )
        self._anchor_cache = None
        return self.old_queries_reason

    # ------------------------------------------------------------------ search
    def anchors(self) -> np.ndarray:
        """Ids of up to ``n_anchors`` backfilled items (a fixed pseudo-random sample) scored in both spaces."""
        members = np.flatnonzero(self.store.in_new)
        if not self.store.has_old or len(members) == 0:
            return members[:0]
        rank = np.random.default_rng(self.seed).permutation(self.size)
        return np.sort(members[np.argsort(rank[members], kind="stable")[: self.n_anchors]])

    def _anchor_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        if self._anchor_cache is None:
            ids = self.anchors()
            self._anchor_cache = (self.store.vectors("old", ids), self.store.vectors("new", ids))
        return self._anchor_cache

    def search(
        self, new_queries, adapted_queries, k: int = 10, merge: str = "calibrated"
    ) -> tuple[np.ndarray, np.ndarray]:
        """Merged top-``k``: ``(scores, ids)`` float32 / int64 [n_q, min(k, size)] (merged scale; ties by id).

        Args:
            new_queries: float32 [n_q, d_new] bare new-model queries (search the backfilled part).
            adapted_queries: float32 [n_q, d_old] the adapter's queries: they search the old part and score the kept
                old vectors of backfilled items where the calibration fuses (None with no old item: new scores alone).
            merge: ``"calibrated"`` (default), ``"naive"`` (raw cosines) or ``"interleave"`` (ranks).
        """
        if merge not in MERGES:
            raise XBTError(f"unknown merge {merge!r}; use one of {list(MERGES)}")
        if k < 1:
            raise XBTError(f"k must be >= 1, got {k}")
        if self.size == 0:
            raise XBTError("the gallery is empty; add items (add_old) before searching")
        k = min(int(k), self.size)  # as search.search: K is clipped to the gallery size
        qn = as_vectors(new_queries, self.store.widths["new"], "new-model queries")
        n_q = qn.shape[0]
        n_new = int(self.store.in_new.sum())
        n_old = self.size - n_new
        fusing = merge == "calibrated" and n_new and self.store.has_old and adapted_queries is not None
        fusing = fusing and self.calibration.fuse_at(n_new / self.size) > 0
        qa = as_vectors(adapted_queries, self.store.widths["old"], "adapter queries") if n_old or fusing else None
        if qa is not None and qa.shape[0] != n_q:
            raise XBTError(f"{n_q} new-model queries but {qa.shape[0]} adapter queries; give both for each query")
        # the calibrated map normalises each query by its parts' top-``depth`` scores: fetch at least that many
        per_part = max(k, self.calibration.depth) if merge == "calibrated" and n_old and n_new else k
        so, io = (
            self.store.search("old", qa, per_part)
            if n_old
            else (np.full((n_q, 0), -np.inf, np.float32), np.zeros((n_q, 0), np.int64))
        )
        sn, inn = (
            self.store.search("new", qn, per_part)
            if n_new
            else (np.full((n_q, 0), -np.inf, np.float32), np.zeros((n_q, 0), np.int64))
        )
        ids = np.concatenate([io, inn], 1)
        in_new = np.concatenate([np.zeros(io.shape, bool), np.ones(inn.shape, bool)], 1)
        raw = np.concatenate([so, sn], 1)
        a_old = a_new = None
        if merge == "calibrated" and self.calibration.per_query and n_old and n_new:
            vo, vn = self._anchor_vectors()
            a_old, a_new = qa @ vo.T, qn @ vn.T
        both = None  # until cutover a backfilled candidate also has its old vector: scored in both spaces
        if fusing:
            uniq, where = np.unique(np.clip(inn, 0, None), return_inverse=True)  # each stored vector read once
            vo = self.store.vectors("old", uniq)[where.reshape(inn.shape)]
            both = np.concatenate([np.zeros_like(so), np.einsum("qd,qkd->qk", qa, vo)], 1)
        merged = merge_scores(raw, raw, in_new, merge, self.calibration, a_old, a_new, n_old, n_new, both)
        merged = np.where(ids >= 0, merged, -np.inf).astype(np.float32)
        order = np.lexsort((np.where(ids < 0, np.iinfo(np.int64).max, ids), -merged), axis=-1)[:, :k]
        return np.take_along_axis(merged, order, 1), np.take_along_axis(ids, order, 1)

    def encode_queries(
        self, adapter: Any, queries: Sequence[Any] | torch.Tensor, old: Any = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(bare new-model queries [n, d_new], old-part queries [n, d_old] or None) of texts or PIL images.

        The old-part queries are the adapter's, or the ``old`` model's own where ``old_queries`` says so.
        """
        if self.query_modality == "text":
            new = adapter.new.encode_text(list(queries))
        else:
            new = adapter.new.encode_image(queries)
        if self.old_queries == "old model":
            if old is None and not self.reads_old_part_queries:
                return new, None
            if old is None:
                raise XBTError(
                    f"this gallery searches its old part with the old model's queries ({self.old_queries_reason}); "
                    f"pass old= (the model {self.old_ref.label!r})"
                )
            text = self.query_modality == "text"
            return new, old.encode_text(list(queries)) if text else old.encode_image(queries)
        adapted = adapter.from_new_embeddings(new, self.query_modality)
        if adapted is None:
            adapted = (
                adapter.encode_text(list(queries)) if self.query_modality == "text" else adapter.encode_image(queries)
            )
        return new, adapted

    def search_with(
        self,
        adapter: Any,
        queries: Sequence[Any] | torch.Tensor,
        k: int = 10,
        merge: str = "calibrated",
        check_fingerprint: bool = True,
        old: Any = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``search`` for raw queries (texts for an image gallery, PIL images for a text gallery), encoded by
        ``adapter`` (and by ``old`` for the old part, where ``old_queries`` is ``"old model"``).

        The adapter must have been fitted for this gallery's old model (``check_adapter``).
        """
        self.check_adapter(adapter, check_fingerprint)
        if merge == "calibrated" and self.old_queries != "old model":
            self.calibration.warn_if_fitted_for_other(adapter.adapter_id())
        new, adapted = self.encode_queries(adapter, queries, old)
        self.served.append({"adapter": adapter.adapter_id(), "queries": len(new), "fraction_new": self.fraction_new})
        return self.search(new, adapted, k, merge)

    # ------------------------------------------------------------------ files
    def describe(self) -> dict[str, Any]:
        """``gallery.json``: format, modality, models, size, store, calibration, item source."""
        return {
            "format": GALLERY_FORMAT,
            "kind": MIXED_GALLERY,
            "modality": self.modality,
            "size": self.size,
            "store": self.store.kind,
            "old_model": asdict(self.old_ref),
            "new_width": self.store.widths["new"],
            "calibration": self.calibration.to_dict(),
            "n_anchors": self.n_anchors,
            "items": self.items,
            "old_queries": {"path": self.old_queries, "reason": self.old_queries_reason},
        }

    def save(self, folder: str | Path) -> Path:
        """Write ``gallery.json`` and ``old.safetensors`` (each atomically) into ``folder``; returns it.

        Only the old part (and the items' content hashes) is written: the new vectors belong to the backfill
        job's batch files. Refused over a folder whose backfill has started for other items.
        """
        folder = Path(folder)
        if not self.store.has_old:
            raise XBTError("this gallery was cut over; its old vectors are gone and it has nothing to save here")
        tensors = {"vectors": torch.from_numpy(self.store.vectors("old", np.arange(self.size)))}
        check_save_over_backfill(folder, self.item_keys, tensors["vectors"])
        if self.item_keys is not None:
            tensors["item_keys"] = torch.from_numpy(self.item_keys)
        folder.mkdir(parents=True, exist_ok=True)
        save_tensors(folder / OLD_VECTORS_FILE, tensors)
        write_json(folder / GALLERY_FILE, self.describe())
        return folder

    @classmethod
    def load(cls, folder: str | Path, store: str | None = None, store_path: str | None = None) -> MixedGallery:
        """The all-old gallery saved in ``folder`` (``gallery.backfill.open_gallery`` adds the backfilled part)."""
        folder = Path(folder)
        meta_file, meta = folder / GALLERY_FILE, read_meta(folder)
        if gallery_kind(meta) == STATIC_GALLERY:
            raise XBTError(
                f"{folder} is a search page's gallery (StaticGallery.save, xbt app --save-gallery), not a gallery "
                "in migration; serve it with xbt app --gallery, or build one with xbt gallery build"
            )
        if meta.get("format") != GALLERY_FORMAT:
            raise XBTError(f"{meta_file} has format {meta.get('format')!r}; this xbt reads format {GALLERY_FORMAT}")
        missing = [key for key in META_KEYS if key not in meta]
        if missing:
            raise XBTError(f"{meta_file} lacks {missing}: not written by MixedGallery.save; rebuild the gallery")
        gallery = cls(
            ModelRef.from_dict(meta["old_model"]),
            meta["new_width"],
            meta["modality"],
            store or meta["store"],
            ScoreCalibration.from_dict(meta["calibration"]),
            n_anchors=meta["n_anchors"],
            items=meta["items"],
            store_path=store_path,
        )
        q = meta.get("old_queries", {"path": "adapter", "reason": gallery.old_queries_reason})  # earlier: adapter
        gallery.old_queries, gallery.old_queries_reason = q["path"], q["reason"]
        tensors = read_old_tensors(folder)
        vectors, keys = tensors["vectors"], tensors.get("item_keys")
        for what, n in (("vectors", vectors.shape[0]), ("item keys", None if keys is None else keys.shape[0])):
            if n is not None and n != meta["size"]:
                raise XBTError(
                    f"{folder / OLD_VECTORS_FILE} holds {n} {what}, {GALLERY_FILE} says {meta['size']}; rebuild the "
                    "gallery"
                )
        gallery.add_old(vectors)
        if keys is None:
            warnings.warn(
                f"{folder} records no content hashes of its items (saved by an xbt before they were recorded, or "
                "built without its items), so its items could not be checked against its backfill; save it again "
                "with its items (add_old(vectors, items=...)) to record them",
                stacklevel=2,
            )
        else:
            gallery.item_keys = keys.numpy().astype(np.uint8)
        return gallery

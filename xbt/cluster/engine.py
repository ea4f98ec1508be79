"""``RayBackfill``: re-embed a gallery's items with the NEW model on Ray Data, into a versioned LanceDB table.

The single-process ``gallery.backfill.BackfillJob`` writes checksummed batch files and a manifest by hand;
here the two tools built for this do that work:

- **Ray Data** runs the embedding: one row per planned batch (``order[j*b:(j+1)*b]``) goes through
  ``map_batches`` to a pool of ``Embedder`` actors (a GPU each where ``gpus_per_worker`` > 0). Ray restarts a
  worker that dies and retries its batch (its actor pools' default ``max_restarts=-1``), keeps the planned order
  (``preserve_order``) and reports progress with its own bars. The same code runs on a laptop
  (``ray.init()`` starts a local Ray) and on a cluster (``address="auto"`` or ``"ray://head:10001"``).
- **LanceDB** is the record (``vectordb.LanceStore``): the driver commits each embedded batch with one
  ``merge_insert``, so each committed batch is one table version, and a row is ``"new"`` only once its
  batch committed. The table is created from the gallery folder's old vectors and tagged ``pre-backfill``
  before the first batch; rollback restores that version.

Resuming reads which rows are already ``"new"`` and runs only the planned batches that are not: a killed
driver or worker loses at most the batches in flight, and no committed item is embedded again. The
planned order is kept beside the table (``plan.json``, written once, atomically) so a resumed run follows
it. Each item is checked on the worker against the content hash the gallery recorded at build time
(``gallery.folder.item_keys``) before it is embedded. One driver at a time holds ``lock`` in the table
folder (``gallery.backfill.job_lock``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..adapters.config import ModelRef
from ..core.errors import XBTError
from ..core.files import write_json
from ..gallery.backfill import check_backfill_inputs, job_lock
from ..gallery.folder import first_difference, item_keys, read_item_keys, read_old_vectors
from ..gallery.mixed import MixedGallery, read_meta
from ..gallery.planner import budget_count
from ..models.embedding import embed_images, embed_texts
from ..models.encoders import as_encoder
from ..vectordb.lance import TABLE, LanceStore, has_table, require_lancedb

PLAN_FILE = "plan.json"


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401 - the Data library is what runs the batches
    except ImportError as exc:  # pragma: no cover - the extra is installed in development
        raise XBTError(
            "the ray engine needs Ray Data: pip install 'xbt[cluster]' (or run with --engine local)"
        ) from exc
    return ray


class Opaque:
    """Holds the items for the workers: Ray Data walks sequences among a stage's arguments for its metadata, which
    would read every item (open every image) on the driver; this holder is no sequence."""

    def __init__(self, value: Any) -> None:
        self.value = value


class Embedder:
    """A Ray Data actor: embeds one planned batch of item ids a call (``{"ids": [1, m]}`` -> ids and vectors).

    Built once per worker: the NEW model (or ``model_factory()``, to load it from storage on the worker; it must
    have the driver's model's ``fingerprint``) moves to the worker's GPU when it has one. ``recorded`` is the
    gallery's content hash per item (uint8 [n, 12], or ``None``): an item that changed since the build stops the
    job before its batch is embedded.
    """

    def __init__(
        self, model: Any, items: Opaque, modality: str, recorded: np.ndarray | None, fingerprint: str
    ) -> None:
        import torch

        encoder = as_encoder(model() if callable(model) and not hasattr(model, "encode_text") else model)
        if str(encoder.fingerprint) != fingerprint:  # the table stamps every vector with the driver's model
            raise XBTError(
                f"this worker's new model ({encoder.name}, fingerprint {encoder.fingerprint}) is not the one the "
                f"backfill stamps its vectors with ({fingerprint}); make model_factory build that model"
            )
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.encoder = encoder.to(self.device) if self.device != "cpu" else encoder
        self.items, self.modality, self.recorded = items.value, modality, recorded

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = np.asarray(batch["ids"][0], np.int64)
        chosen = [self.items[int(i)] for i in ids]
        if self.recorded is not None:
            j = first_difference(self.recorded[ids], item_keys(chosen, self.modality))
            if j is not None:
                raise XBTError(
                    f"item {int(ids[j])} has changed since the gallery was built; nothing was committed for its "
                    "batch. Give the items the gallery was built from"
                )
        fn = embed_images if self.modality == "image" else embed_texts
        vectors = fn(self.encoder, chosen, batch_size=len(chosen), cache=False, verbose=False, device=self.device)
        return {"ids": ids[None], "vectors": vectors.float().cpu().numpy()[None]}


class RayBackfill:
    """Re-embeds a gallery's items on Ray Data into a LanceDB table, in planned order; resumable (module doc).

    Args:
        gallery_dir: a folder written by ``MixedGallery.save`` (its old vectors seed the table).
        new: the NEW model (``CLIPEncoder`` or raw model); the table's rows are stamped with its fingerprint.
        items: the gallery's items by id (texts, or images: ``data.sources.LazyImages`` reads them on workers).
        table_dir: the LanceDB database folder (made on the first run; later runs resume it).
        order: planned item ids, most useful first (``gallery.planner.plan_order``); fixed by the first run.
        batch_size: items per committed batch (one table version each; fixed by the first run).
        workers: embedding actors; gpus_per_worker: GPUs each (0 on CPU machines).
        address: an existing Ray cluster (``"auto"``, ``"ray://host:10001"``); ``None`` starts a local Ray
            unless one is already initialised.
        model_factory: builds the NEW model on each worker instead of shipping ``new`` (large models).
    """

    def __init__(
        self,
        gallery_dir: str | Path,
        new: Any,
        items: Sequence[Any],
        table_dir: str | Path,
        order: Sequence[int] | None = None,
        batch_size: int = 256,
        workers: int = 1,
        gpus_per_worker: float = 0,
        address: str | None = None,
        model_factory: Callable[[], Any] | None = None,
    ) -> None:
        self.gallery_dir, self.table_dir = Path(gallery_dir), Path(table_dir)
        self.meta = read_meta(self.gallery_dir)
        self.new = as_encoder(new)
        self.items, self.n = items, int(self.meta["size"])
        self.order = check_backfill_inputs(self.meta, self.new, items, order, batch_size)
        if workers < 1 or gpus_per_worker < 0:
            raise XBTError(f"workers must be >= 1 and gpus_per_worker >= 0, got {workers} and {gpus_per_worker}")
        self.batch_size, self.workers, self.gpus = int(batch_size), int(workers), float(gpus_per_worker)
        self.address, self.model_factory = address, model_factory
        self.old_ref = ModelRef.from_dict(self.meta["old_model"])

    # -- the table and the plan
    def store(self) -> LanceStore:
        """The LanceDB store: opened (its stamps checked) or, on the first run, made from the old vectors."""
        d_old, d_new, new_fp = self.old_ref.embed_dim, self.meta["new_width"], str(self.new.fingerprint)
        lancedb, _ = require_lancedb()
        if has_table(lancedb.connect(str(self.table_dir))):
            store = LanceStore.open(self.table_dir, d_old, d_new)
            if store.stamps["new_model"] != new_fp or store.size != self.n:
                raise XBTError(
                    f"the LanceDB table in {self.table_dir} was made for {store.size} items and new model "
                    f"{store.stamps['new_model']}, not {self.n} items and {self.new.name} ({new_fp}); resume with "
                    "that model and gallery, or give another --store-path"
                )
            return store
        store = LanceStore(
            d_old, d_new, path=self.table_dir, old_model=self.old_ref.fingerprint or "", new_model=new_fp
        )
        store.add_old(read_old_vectors(self.gallery_dir))
        return store

    def plan(self) -> dict[str, Any]:
        """``plan.json`` beside the table: the planned order and batch size, written by the first run only."""
        path = self.table_dir / PLAN_FILE
        if path.is_file():
            plan = json.loads(path.read_text(encoding="utf-8"))
            if self.order is not None and self.order.tolist() != plan["order"]:
                raise XBTError(
                    "this backfill was started with another order; resume without one (or the same), or roll it "
                    "back and remove the table to plan anew"
                )
            return plan
        order = self.order if self.order is not None else np.arange(self.n)
        plan = {"order": order.tolist(), "batch_size": self.batch_size, "new_model": str(self.new.fingerprint)}
        write_json(path, plan)
        return plan

    # -- the run
    def run(
        self,
        budget: float | int = 1.0,
        verbose: bool = True,
        refresh_every: float | None = None,
        on_refresh: Callable[[LanceStore, np.ndarray], Any] | None = None,
    ) -> dict[str, Any]:
        """Backfill until ``budget`` items (fraction or count) of the plan are in the new space.

        ``on_refresh(store, ids)`` is called each time the share of the gallery in the new space passes a
        multiple of ``refresh_every`` (0.05: every 5 %), with the ids of every item new so far: the point to
        refresh the adapter from them (``cluster.refresh_adapter``) for the part still old. The backfill waits
        for it; what it returns is kept in ``refreshes``.

        Returns ``embedded`` (items embedded and committed by this run), ``batches`` (committed this run),
        ``done`` (items in the new space now), ``target``, ``version`` (the table's), ``seconds`` and
        ``items_per_second`` of this run, and ``commit_seconds`` (of those, the driver's LanceDB commits).
        """
        if (refresh_every is None) != (on_refresh is None):
            raise XBTError("give refresh_every and on_refresh together (the points, and what to do at them)")
        if refresh_every is not None and not 0 < refresh_every <= 1:
            raise XBTError(f"refresh_every is a share of the gallery in (0, 1], got {refresh_every}")
        ray = _ray()
        self.table_dir.mkdir(parents=True, exist_ok=True)
        with job_lock(self.table_dir):
            store, plan = self.store(), self.plan()
            order, size = np.asarray(plan["order"], np.int64), int(plan["batch_size"])
            target = budget_count(budget, self.n)
            batches = [order[s : min(s + size, target)] for s in range(0, target, size)]
            # what each planned batch still lacks (a run to a smaller budget may have ended inside a batch)
            todo = [b[~store.in_new[b]] for b in batches if not store.in_new[b].all()]
            stats = {"embedded": 0, "batches": 0, "target": target, "commit_seconds": 0.0, "refreshes": []}
            step = refresh_every or 1.0
            mark = (math.floor(store.in_new.mean() / step + 1e-9) + 1) * step  # the next point to refresh at
            t0 = time.perf_counter()
            if todo:
                if not ray.is_initialized():
                    ray.init(address=self.address, log_to_driver=verbose, include_dashboard=False)
                ctx = ray.data.DataContext.get_current()
                ctx.execution_options.preserve_order = True
                ctx.enable_progress_bars = verbose
                rows = ray.data.from_items([{"ids": b} for b in todo], override_num_blocks=len(todo))
                embedded = rows.map_batches(
                    Embedder,
                    batch_size=1,
                    fn_constructor_kwargs={
                        "model": self.model_factory or self.new,
                        "items": Opaque(self.items),
                        "modality": self.meta["modality"],
                        "recorded": read_item_keys(self.gallery_dir),
                        "fingerprint": str(self.new.fingerprint),
                    },
                    compute=ray.data.ActorPoolStrategy(size=self.workers),
                    num_gpus=self.gpus or None,
                )  # Ray Data's actor pools restart dead workers and retry their batch by default
                for row in embedded.iter_rows():
                    ids = np.asarray(row["ids"], np.int64)
                    t = time.perf_counter()
                    store.set_new(ids, np.asarray(row["vectors"], np.float32))  # one commit: one table version
                    stats["commit_seconds"] += time.perf_counter() - t
                    stats["embedded"] += len(ids)
                    stats["batches"] += 1
                    share = float(store.in_new.mean())
                    if on_refresh is not None and share >= mark - 1e-9:
                        done = np.flatnonzero(store.in_new)
                        stats["refreshes"].append({"share": share, "result": on_refresh(store, done)})
                        mark = (math.floor(share / step + 1e-9) + 1) * step
            seconds = time.perf_counter() - t0
            return {
                **stats,
                "done": int(store.in_new.sum()),
                "version": store.version,
                "seconds": round(seconds, 3),
                "commit_seconds": round(stats.pop("commit_seconds"), 3),
                "items_per_second": round(stats["embedded"] / seconds, 1) if stats["embedded"] else None,
            }


def open_lance_gallery(gallery_dir: str | Path, table_dir: str | Path) -> MixedGallery:
    """The gallery of ``gallery_dir`` searched from the LanceDB table a ``RayBackfill`` wrote (its new part too)."""
    gallery = MixedGallery.load(gallery_dir)
    store = LanceStore.open(table_dir, gallery.old_ref.embed_dim, gallery.store.widths["new"])
    if store.size != gallery.size or store.stamps["old_model"] != (gallery.old_ref.fingerprint or ""):
        raise XBTError(
            f"the LanceDB table in {table_dir} holds {store.size} items of old model {store.stamps['old_model']}; "
            f"the gallery {gallery_dir} has {gallery.size} of {gallery.old_ref.fingerprint}: give its own table"
        )
    gallery.store = store
    return gallery


def rollback_table(table_dir: str | Path) -> int | None:
    """Restore the table to its ``pre-backfill`` version (``None``: no batch was committed, nothing done)."""
    lancedb, _ = require_lancedb()
    if not has_table(lancedb.connect(str(table_dir))):
        raise XBTError(f"{table_dir} holds no xbt gallery table ({TABLE!r}); nothing to roll back there")
    meta = json.loads(lancedb.connect(str(table_dir)).open_table(TABLE).schema.metadata[b"xbt"])
    with job_lock(Path(table_dir)):
        store = LanceStore.open(table_dir, meta["old_width"], meta["new_width"])
        version = store.pre_backfill_version
        if version is not None:
            store.rollback()
        return version

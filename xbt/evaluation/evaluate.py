"""Retrieval evaluation of an upgrade: old->old, new->old (one row per method) and new->new.

``evaluate(old, upgraded, dataset=...)`` embeds the gallery once per model (in memory for the run,
on disk through ``xbt.embed``'s cache across runs), searches it with ``xbt.search`` (FAISS) and
returns an ``xbt.report.Report``:

* Recall@K for image->text (I2T; a hit when *any* caption of the query image is in the top K) and
  text->image (T2I; a hit when the caption's *own* image is in the top K);
* the compatibility verdict: new->old strictly above old->old, per K and direction;
* flips against old->old: PFR (share of queries old->old missed and new->old hits at K), NFR (the
  reverse) and their difference; and gap closure (new->old - old->old) / (new->new - old->old)
  (``None`` when new->new equals old->old);
* per method, whether it needs the old encoder at query time and its query cost relative to the
  bare new model (encode a fixed sample of queries with both, one run, cache off).

Each adapter is asked for its queries through the adapter contract only: ``from_new_embeddings``
(reusing the new model's embeddings of the gallery when its query path starts there), else
``embed_texts`` / ``embed_images``.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..adapters.adapter import Adapter
from ..core.errors import XBTError
from ..data.retrieval import RetrievalDataset, load_dataset
from ..models.embedding import CacheSpec, embed_images, embed_texts
from ..models.encoders import CLIPEncoder, as_encoder
from .report import MethodResult, Report, closure
from .search import Retrieval, check_ks, cross_recall, recall_at_k
from .tables import COST_IMAGES, COST_ROUNDS, COST_TEXTS, DIRECTIONS

#: images materialised at a time when embedding a lazy gallery
IMAGE_CHUNK = 512


def flip_rates(base_hits: np.ndarray, new_hits: np.ndarray) -> dict[str, float]:
    """Flips of ``new_hits`` against ``base_hits`` (bool arrays over the same queries).

    ``pfr``: share of queries the base missed and the new search hits (positive flips);
    ``nfr``: share the base hit and the new search misses (negative flips); ``delta`` = pfr - nfr,
    which equals the Recall@K difference.
    """
    b, n = np.asarray(base_hits, bool), np.asarray(new_hits, bool)
    if b.shape != n.shape:
        raise XBTError(f"flip rates compare the same queries; got {b.shape} and {n.shape} hits")
    pfr, nfr = float((~b & n).mean()), float((b & ~n).mean())
    return {"pfr": pfr, "nfr": nfr, "delta": pfr - nfr}


def gap_closure(old_old: float, new_old: float, new_new: float) -> float | None:
    """(new->old - old->old) / (new->new - old->old): 1 is a full backfill's gain, 0 none, < 0 worse.

    ``None`` when new->new equals old->old (no gap to close).
    """
    return closure(old_old, new_old, new_new)


class _Embedder:
    """Embeds one dataset per model once: raw encoder outputs are kept by fingerprint."""

    def __init__(self, ds: RetrievalDataset, cache: CacheSpec, device, verbose: bool) -> None:
        self.ds, self.cache, self.device, self.verbose = ds, cache, device, verbose
        self.texts = ds.flat_captions()
        self._raw: dict[tuple[str, str], torch.Tensor] = {}

    def _images(self, fn: Callable[[list], torch.Tensor]) -> torch.Tensor:
        imgs = self.ds.images
        if isinstance(imgs, list):
            return fn(imgs)
        return torch.cat([fn(list(imgs[s : s + IMAGE_CHUNK])) for s in range(0, len(imgs), IMAGE_CHUNK)])

    def raw(self, enc: CLIPEncoder, kind: str) -> torch.Tensor:
        """``enc``'s embeddings of the captions (``kind="text"``) or images, computed once."""
        key = (enc.fingerprint, kind)
        if key not in self._raw:
            opts = {"cache": self.cache, "device": self.device, "verbose": self.verbose}
            if kind == "text":
                self._raw[key] = embed_texts(enc, self.texts, **opts)
            else:
                self._raw[key] = self._images(lambda chunk: embed_images(enc, chunk, **opts))
        return self._raw[key]

    def adapted(self, adapter: Adapter, kind: str) -> torch.Tensor:
        """The adapter's old-space embeddings of the captions or images, through its contract."""
        reused = adapter.from_new_embeddings(self.raw(adapter.new, kind), kind)
        if reused is not None:
            return reused
        opts = {"cache": self.cache, "verbose": self.verbose, "device": self.device}
        if kind == "text":
            return adapter.embed_texts(self.texts, **opts)
        return self._images(lambda chunk: adapter.embed_images(chunk, **opts))


def _query_cost(
    adapter: Adapter, ds: RetrievalDataset, texts: list[str], repeats: int = COST_ROUNDS
) -> dict[str, float]:
    """Adapter query time / bare new model time on the same sample of captions and images.

    The sample is the first ``COST_TEXTS`` captions and ``COST_IMAGES`` images, uncached. After a
    warm-up, ``repeats`` rounds each time one bare call and one adapter call back to back, the first
    of the two alternating between rounds; the figure is the median of the per-round ratios, so a
    load spike on a shared machine moves one round, not the result. Still one run on one machine:
    ``scripts/benchmarks/query_cost.py`` measures it with more rounds and batch sizes.
    """
    sample_t = texts[:COST_TEXTS]
    sample_i = list(ds.images[: min(COST_IMAGES, ds.n_images)])
    new = adapter.new
    out = {}
    for kind, items, bare, adapted in (
        ("text", sample_t, new.encode_text, adapter.encode_text),
        ("image", sample_i, new.encode_image, adapter.encode_image),
    ):
        bare(items[:2])  # warm up both paths (lazy init, allocator) before timing
        adapted(items[:2])
        rounds = paired_rounds(bare, adapted, items, repeats)
        out[kind] = round(statistics.median(a / max(b, 1e-9) for b, a in rounds), 3)
    return out


def paired_rounds(bare: Callable, adapted: Callable, items: Any, rounds: int) -> list[tuple[float, float]]:
    """``rounds`` pairs of (bare seconds, adapted seconds), each pair two calls on ``items`` back to back.

    Which of the two runs first alternates between rounds, so neither always meets a warm or a cold
    machine; the ratio within a round is what a load change on a shared machine leaves alone.
    """
    out = []
    for r in range(rounds):
        seconds = [0.0, 0.0]
        for j in (0, 1) if r % 2 == 0 else (1, 0):
            t0 = time.perf_counter()
            (bare, adapted)[j](items)
            seconds[j] = time.perf_counter() - t0
        out.append((seconds[0], seconds[1]))
    return out


def _split_upgraded(upgraded: Any) -> tuple[dict[str, Adapter], CLIPEncoder]:
    if upgraded is None:
        raise XBTError(
            "upgraded is None: pass an xbt.Adapter, a dict {name: Adapter}, or a new CLIP model (new→new only)"
        )
    if isinstance(upgraded, Adapter):
        adapters = {upgraded.method: upgraded}
    elif isinstance(upgraded, dict):
        if not upgraded:
            raise XBTError("the dict of adapters is empty; pass {method_name: Adapter, ...}")
        adapters = {}
        for name, a in upgraded.items():
            if not isinstance(a, Adapter):
                raise XBTError(f"upgraded[{name!r}] is a {type(a).__name__}, not an xbt.Adapter")
            adapters[str(name)] = a
    else:
        return {}, as_encoder(upgraded)
    news = {a.new.fingerprint: a.new for a in adapters.values()}
    if len(news) > 1:
        raise XBTError(
            f"the adapters {list(adapters)} were built on different new models ({[n.name for n in news.values()]}); "
            "one report has one new→new row: evaluate each new model separately"
        )
    return adapters, next(iter(news.values()))


def evaluate(
    old: Any,
    upgraded: Any,
    dataset: str | RetrievalDataset = "toy",
    split: str | None = None,
    ks: Sequence[int] = (1, 5, 10),
    index: str = "flat",
    nlist: int | None = None,
    nprobe: int | None = None,
    root: str | os.PathLike | None = None,
    source: str = "local",
    limit: int | None = None,
    cache: CacheSpec = None,
    device: str | torch.device | None = None,
    query_cost: bool = True,
    verbose: bool = True,
    check_fingerprint: bool = True,
    ceiling: dict[str, dict] | None = None,
    **dataset_kwargs: Any,
) -> Report:
    """Evaluate an upgrade on a retrieval dataset: old->old, new->old per method, new->new.

    Args:
        old: the model that embedded the gallery (``xbt.load_clip`` result or a raw CLIP model).
        upgraded: an ``xbt.Adapter`` (new->old and, with ``adapter.new``, new->new); a dict
            ``{method_name: Adapter}`` to compare several methods in one report (they must share
            one new model, which is embedded once); or a plain new model (new->new only).
        dataset: ``"toy"``, ``"flickr30k"``, ``"coco"``, ``"nocaps"`` or a ``RetrievalDataset``.
        split, root, source, **dataset_kwargs: passed to ``xbt.datasets.load_dataset`` with a
            dataset name (refused with a ``RetrievalDataset``, which is already loaded).
        limit: evaluate on the first ``limit`` images only.
        ks: the K of Recall@K.
        index: ``"flat"`` (exact inner product), ``"block"`` (the same in bounded memory, for
            full-protocol galleries) or ``"ivf"`` (approximate; ``nlist``/``nprobe``).
        cache: embedding cache (``None`` default folder, ``False`` off, or a folder).
        device: where to run the models (CUDA when present by default).
        query_cost: time each adapter's query encoding against the bare new model.
        verbose: progress bars.
        check_fingerprint: refuse an adapter made for an old model whose weights differ from
            ``old``'s (default); ``False`` when you know they are equivalent.
        ceiling: optional Recall@K (direction -> K -> recall in [0, 1]) of the best query-side map a
            frozen old gallery allows (measured elsewhere, e.g. ``python -m scripts.benchmarks.ceiling``): adds a
            ceiling row and each method's ceiling closure (``Report.set_ceiling``).

    Returns:
        a ``Report``. Galleries: new->old I2T searches adapter-embedded images against the OLD
        model's caption embeddings; new->old T2I searches adapter-embedded captions against the
        OLD model's image embeddings.
    """
    ds = _dataset(dataset, split, root, source, limit, dataset_kwargs)
    ks = check_ks(ks)
    old_enc = as_encoder(old)
    adapters, new_enc = _split_upgraded(upgraded)
    for name, a in adapters.items():
        a.old_ref.check(old_enc, "old", f"adapter {name!r}", check_fingerprint)

    timings: dict[str, float] = {}
    emb = _Embedder(ds, cache, device, verbose)
    t0 = time.perf_counter()
    old_img, old_txt = emb.raw(old_enc, "image"), emb.raw(old_enc, "text")
    new_img, new_txt = emb.raw(new_enc, "image"), emb.raw(new_enc, "text")
    method_emb = {n: (emb.adapted(a, "image"), emb.adapted(a, "text")) for n, a in adapters.items()}
    timings["embed_s"] = round(time.perf_counter() - t0, 3)

    img_owner = np.arange(ds.n_images, dtype=np.int64)
    cap_owner = ds.caption_owner()
    opts = {"ks": ks, "index": index, "nlist": nlist, "nprobe": nprobe}

    def both(q_img, g_txt, q_txt, g_img) -> dict[str, Retrieval]:
        if index != "ivf" and q_img is g_img and q_txt is g_txt:  # one model's own gallery: one product, two reads
            i2t, t2i = cross_recall(q_img, q_txt, img_owner, cap_owner, ks, verbose=verbose)
            return {"i2t": i2t, "t2i": t2i}
        return {
            "i2t": recall_at_k(q_img, g_txt, img_owner, cap_owner, **opts),
            "t2i": recall_at_k(q_txt, g_img, cap_owner, img_owner, **opts),
        }

    t0 = time.perf_counter()
    base = both(old_img, old_txt, old_txt, old_img)
    backfilled = both(new_img, new_txt, new_txt, new_img)
    results = {n: both(qi, old_txt, qt, old_img) for n, (qi, qt) in method_emb.items()}
    timings["search_s"] = round(time.perf_counter() - t0, 3)

    def recall_of(r: dict[str, Retrieval]) -> dict[str, dict[int, float]]:
        return {d: r[d].recall for d in DIRECTIONS}

    old_old, new_new = recall_of(base), recall_of(backfilled)
    methods = {
        name: _method_result(
            name, adapters[name], base, r, old_old, new_new, ks, _query_cost if query_cost else None, ds, emb
        )
        for name, r in results.items()
    }
    report = Report(
        dataset=ds.name,
        split=ds.split,
        n_images=ds.n_images,
        n_captions=ds.n_captions,
        ks=ks,
        old_model=old_enc.name,
        new_model=new_enc.name,
        index=_index_label(index, nlist, nprobe),
        old_old=old_old,
        new_new=new_new,
        methods=methods,
        timings=timings,
    )
    return report.set_ceiling(ceiling) if ceiling is not None else report


def _dataset(dataset, split, root, source, limit, dataset_kwargs) -> RetrievalDataset:
    """The dataset ``evaluate`` runs on: a name loaded with its options, or a ``RetrievalDataset`` (whose options
    are refused: it is already loaded)."""
    if not isinstance(dataset, RetrievalDataset):
        return load_dataset(dataset, split=split, root=root, source=source, limit=limit, **dataset_kwargs)
    given = {"split": split, "root": root, **dataset_kwargs, **({"source": source} if source != "local" else {})}
    ignored = sorted(k for k, v in given.items() if v is not None)
    if ignored:
        raise XBTError(
            f"{ignored} only apply when dataset is a name; the RetrievalDataset given is already loaded: "
            "load the split you want with xbt.datasets.load_dataset(name, split=..., root=...), or pass the name"
        )
    return dataset.head(limit) if limit is not None else dataset


def _method_result(name, adapter, base, r, old_old, new_new, ks, query_cost, ds, emb) -> MethodResult:
    """One adapter's row: recall, backward compatibility per K, flips against old->old, gap closure, query cost."""
    rec = {d: r[d].recall for d in DIRECTIONS}
    flips = {d: {k: flip_rates(base[d].hits[k], r[d].hits[k]) for k in ks} for d in DIRECTIONS}
    return MethodResult(
        name=name,
        recall=rec,
        compatible={d: {k: rec[d][k] > old_old[d][k] for k in ks} for d in DIRECTIONS},
        pfr={d: {k: flips[d][k]["pfr"] for k in ks} for d in DIRECTIONS},
        nfr={d: {k: flips[d][k]["nfr"] for k in ks} for d in DIRECTIONS},
        delta={d: {k: flips[d][k]["delta"] for k in ks} for d in DIRECTIONS},
        gap_closure={d: {k: gap_closure(old_old[d][k], rec[d][k], new_new[d][k]) for k in ks} for d in DIRECTIONS},
        requires_old_encoder=adapter.requires_old_encoder,
        query_cost=query_cost(adapter, ds, emb.texts) if query_cost else None,
        info={"method": adapter.method, "repr": repr(adapter)},
    )


def _index_label(index: str, nlist: int | None, nprobe: int | None) -> str:
    """How the report names the search it ran."""
    if index == "flat":
        return "faiss exact inner product (IndexFlatIP)"
    if index == "block":
        return "faiss exact inner product in blocks (IndexFlatIP, running top-k)"
    return f"faiss IVF (IndexIVFFlat, nlist={nlist or '≈√n'}, nprobe={nprobe or 16}; approximate)"

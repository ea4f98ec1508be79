"""Retrieval evaluation of an upgrade: old->old, new->old (one row per method) and new->new.

``evaluate(old, upgraded, dataset=...)`` embeds the gallery once per model (in memory for the run,
on disk through ``xbt.embed``'s cache across runs), searches it with FAISS and returns a ``Report``:

* Recall@K for image->text (I2T; a hit when *any* caption of the query image is in the top K) and
  text->image (T2I; a hit when the caption's *own* image is in the top K);
* the compatibility verdict: new->old strictly above old->old, per K and direction;
* flips against old->old: PFR (share of queries old->old missed and new->old hits at K), NFR (the
  reverse) and their difference; and gap closure (new->old - old->old) / (new->new - old->old)
  (``None`` when new->new equals old->old);
* per method, whether it needs the old encoder at query time and its query cost relative to the
  bare new model (encode a fixed sample of queries with both, one run, cache off).

Search conventions (see ``recall_at_k``): scores are inner products of L2-normalised float32
embeddings; ties are broken in favour of the lower gallery index; K larger than the gallery is
clipped to the gallery size, so every query whose target is in the gallery is a hit there.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .adapter import Adapter
from .datasets import RetrievalDataset, load_dataset
from .embed import CacheSpec, embed_images, embed_texts
from .encoders import CLIPEncoder, as_encoder
from .errors import XBTError

DIRECTIONS = ("i2t", "t2i")
DIRECTION_LABELS = {"i2t": "image→text", "t2i": "text→image"}
OLD_OLD, NEW_NEW = "old→old", "new→new"
#: queries timed for the "query cost vs bare new" column
COST_TEXTS, COST_IMAGES = 256, 64
#: images materialised at a time when embedding a lazy gallery
IMAGE_CHUNK = 512


# ====================================================================== search and recall


def _as_matrix(x: Any, what: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    arr = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if arr.ndim != 2:
        raise XBTError(f"{what} must be a 2-D [n, d] array of embeddings, got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise XBTError(f"{what} is empty; pass at least one embedding")
    if not np.isfinite(arr).all():
        raise XBTError(f"{what} holds NaN or inf values; check the model and its inputs")
    return arr


def _as_owner(x: Any, n: int, what: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x).astype(np.int64).reshape(-1)
    if arr.shape[0] != n:
        raise XBTError(f"{what} has {arr.shape[0]} entries for {n} embeddings; give one owner id per row")
    return arr


def build_index(gallery: np.ndarray, index: str = "flat", nlist: int | None = None, nprobe: int | None = None):
    """A FAISS inner-product index over ``gallery`` (float32 [n, d], unit rows).

    ``"flat"``: exact search (``IndexFlatIP``). ``"ivf"``: ``IndexIVFFlat`` with ``nlist`` cells
    (default about sqrt(n), at most n/39 so every cell has training points) of which ``nprobe``
    (default min(nlist, 16)) are visited per query: approximate, for galleries of 100K+ items.
    """
    import faiss

    n, d = gallery.shape
    if index == "flat":
        idx = faiss.IndexFlatIP(d)
    elif index == "ivf":
        nlist = int(nlist or max(1, min(round(math.sqrt(n)), n // 39)))
        if not 1 <= nlist <= n:
            raise XBTError(f"nlist must be between 1 and the gallery size {n}, got {nlist}")
        quantizer = faiss.IndexFlatIP(d)
        idx = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        idx.train(gallery)
        idx.nprobe = int(min(nlist, nprobe or 16))
    else:
        raise XBTError(f"unknown index {index!r}; use 'flat' (exact) or 'ivf' (approximate, large galleries)")
    idx.add(gallery)
    return idx


def search(
    queries: Any, gallery: Any, k: int, index: str = "flat", nlist: int | None = None, nprobe: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` gallery rows for each query by inner product: ``(scores, ids)``, each [n_queries, k'].

    ``k' = min(k, len(gallery))``. Rows are sorted by score, descending, and equal scores by gallery
    index, ascending, so the result matches a stable argsort of the negated scores (ties are real:
    duplicate captions embed identically). FAISS orders ties arbitrarily and keeps an arbitrary
    subset of the items tied at rank k, so the returned lists are re-sorted and the rare rows with a
    tie across rank k are recomputed exactly with numpy. IVF rows may end in id -1 (fewer than
    ``k`` candidates in the probed cells); those count as misses.
    """
    q = _as_matrix(queries, "queries")
    g = _as_matrix(gallery, "gallery")
    if q.shape[1] != g.shape[1]:
        raise XBTError(
            f"queries are {q.shape[1]}-d but the gallery is {g.shape[1]}-d; embed both in the same space "
            "(new->old queries must come from the adapter, not the bare new model)"
        )
    if k < 1:
        raise XBTError(f"k must be >= 1, got {k}")
    n = g.shape[0]
    k = min(int(k), n)
    k1 = min(k + 1, n)  # one extra to see ties straddling rank k
    idx = build_index(g, index, nlist, nprobe)
    scores, ids = idx.search(q, k1)
    scores = np.where(ids < 0, -np.inf, scores)
    order = np.lexsort((np.where(ids < 0, np.iinfo(np.int64).max, ids), -scores), axis=-1)
    scores, ids = np.take_along_axis(scores, order, -1), np.take_along_axis(ids, order, -1)
    if k1 > k:
        # FAISS keeps an unspecified subset of items tied at the boundary: redo those rows exactly
        tied = np.flatnonzero((scores[:, k - 1] == scores[:, k]) & np.isfinite(scores[:, k]))
        for s in range(0, len(tied), 1024):
            rows = tied[s : s + 1024]
            exact = q[rows] @ g.T
            top = np.argsort(-exact, axis=1, kind="stable")[:, :k1]
            ids[rows] = top
            scores[rows] = np.take_along_axis(exact, top, 1)
    return scores[:, :k], ids[:, :k]


@dataclass
class Retrieval:
    """Per-query outcome of one search direction.

    Attributes:
        ks: the K values asked for.
        first_hit: int64 [n_queries]: 0-based rank of the first correct gallery item within the
            top ``min(max(ks), gallery size)``, or -1 when none is there.
        hits: K -> bool [n_queries]: the query's target is in its top K.
    """

    ks: tuple[int, ...]
    first_hit: np.ndarray
    hits: dict[int, np.ndarray]

    @property
    def recall(self) -> dict[int, float]:
        """K -> Recall@K (share of queries that hit), in [0, 1]."""
        return {k: float(h.mean()) for k, h in self.hits.items()}


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    if isinstance(ks, int):
        ks = (ks,)
    out = tuple(int(k) for k in ks)
    if not out or any(k < 1 for k in out):
        raise XBTError(f"ks must be positive integers like (1, 5, 10), got {ks!r}")
    return tuple(sorted(set(out)))


def recall_at_k(
    query_emb: Any,
    gallery_emb: Any,
    query_owner: Any,
    gallery_owner: Any,
    ks: Sequence[int] = (1, 5, 10),
    index: str = "flat",
    nlist: int | None = None,
    nprobe: int | None = None,
) -> Retrieval:
    """Recall@K of a search where a query hits when a gallery item with the same owner id is in its top K.

    Image->text: queries are images (owner = image index), the gallery is the flat caption list
    (owner = the caption's image), so a hit is *any* of the image's captions in the top K.
    Text->image: queries are captions (owner = their image), the gallery is the images (owner =
    index), so a hit is the caption's own image in the top K.

    Args:
        query_emb, gallery_emb: float32 [n, d] L2-normalised embeddings (torch or numpy).
        query_owner, gallery_owner: integer ids, one per row.
        ks: the K values. K above the gallery size is clipped to it (recall 1.0 for queries whose
            target is in the gallery). Ties: lower gallery index first (see ``search``).
        index, nlist, nprobe: FAISS index choice, see ``build_index``.

    Returns:
        a ``Retrieval`` holding per-query hits (for flip rates) and ``recall``.
    """
    q = _as_matrix(query_emb, "query_emb")
    g = _as_matrix(gallery_emb, "gallery_emb")
    qo = _as_owner(query_owner, q.shape[0], "query_owner")
    go = _as_owner(gallery_owner, g.shape[0], "gallery_owner")
    ks = _check_ks(ks)
    _, ids = search(q, g, max(ks), index, nlist, nprobe)
    match = (ids >= 0) & (go[np.clip(ids, 0, None)] == qo[:, None])
    first = np.where(match.any(axis=1), match.argmax(axis=1), -1).astype(np.int64)
    hits = {k: (first >= 0) & (first < k) for k in ks}
    return Retrieval(ks, first, hits)


# ====================================================================== metrics on hits


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
    gap = new_new - old_old
    if abs(gap) < 1e-12:
        return None
    return (new_old - old_old) / gap


# ====================================================================== the report


def _kd(d: dict[int, Any]) -> dict[str, Any]:
    return {str(k): v for k, v in d.items()}


def _ki(d: dict[str, Any]) -> dict[int, Any]:
    return {int(k): v for k, v in d.items()}


def _num(x: float) -> str:
    s = f"{x:.2f}"
    return "0.00" if s == "-0.00" else s


def _pct(x: float | None) -> str:
    return "–" if x is None else _num(100 * x)


@dataclass
class MethodResult:
    """One upgrade method's new->old results and how they compare with old->old and new->new.

    All dicts are direction (``"i2t"``, ``"t2i"``) -> K -> value; rates are in [0, 1].
    """

    name: str
    recall: dict[str, dict[int, float]]
    compatible: dict[str, dict[int, bool]]
    pfr: dict[str, dict[int, float]]
    nfr: dict[str, dict[int, float]]
    delta: dict[str, dict[int, float]]
    gap_closure: dict[str, dict[int, float | None]]
    requires_old_encoder: bool = False
    query_cost: dict[str, float] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def backward_compatible(self) -> bool:
        """True when new->old beats old->old strictly at every K in both directions."""
        return all(all(v.values()) for v in self.compatible.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (K keys as strings)."""
        per = {name: {d: _kd(v) for d, v in getattr(self, name).items()}
               for name in ("recall", "compatible", "pfr", "nfr", "delta", "gap_closure")}
        return {"name": self.name, **per, "backward_compatible": self.backward_compatible,
                "requires_old_encoder": self.requires_old_encoder, "query_cost": self.query_cost, "info": self.info}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MethodResult:
        """Inverse of ``to_dict``."""
        per = {name: {dr: _ki(v) for dr, v in d[name].items()}
               for name in ("recall", "compatible", "pfr", "nfr", "delta", "gap_closure")}
        return cls(name=d["name"], **per, requires_old_encoder=bool(d.get("requires_old_encoder", False)),
                   query_cost=d.get("query_cost"), info=dict(d.get("info", {})))


@dataclass
class Report:
    """The outcome of ``evaluate``: Recall@K of old->old, each method's new->old, and new->new.

    Recall dicts are direction (``"i2t"``, ``"t2i"``) -> K -> Recall@K in [0, 1]. ``new_new`` is
    ``None`` when no new model was evaluated. ``to_markdown()`` is the table users read;
    ``to_dict()`` is JSON-ready; ``plot(path)`` draws a PNG; ``save(folder)`` writes all three.
    """

    dataset: str
    split: str
    n_images: int
    n_captions: int
    ks: tuple[int, ...]
    old_model: str
    new_model: str | None
    index: str
    old_old: dict[str, dict[int, float]]
    new_new: dict[str, dict[int, float]] | None
    methods: dict[str, MethodResult] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def backward_compatible(self) -> dict[str, bool]:
        """Method name -> verdict (new->old strictly above old->old at every K, both directions)."""
        return {name: m.backward_compatible for name, m in self.methods.items()}

    def rows(self) -> list[tuple[str, dict[str, dict[int, float]]]]:
        """(label, recall) per table row: old->old, new->old per method, new->new."""
        out = [(OLD_OLD, self.old_old)]
        out += [(f"new→old ({name})", m.recall) for name, m in self.methods.items()]
        if self.new_new is not None:
            out.append((NEW_NEW, self.new_new))
        return out

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (K keys are strings; rates in [0, 1])."""
        return {
            "dataset": self.dataset, "split": self.split, "n_images": self.n_images, "n_captions": self.n_captions,
            "ks": list(self.ks), "old_model": self.old_model, "new_model": self.new_model, "index": self.index,
            "old_old": {d: _kd(v) for d, v in self.old_old.items()},
            "new_new": None if self.new_new is None else {d: _kd(v) for d, v in self.new_new.items()},
            "methods": {n: m.to_dict() for n, m in self.methods.items()},
            "backward_compatible": self.backward_compatible,
            "timings": dict(self.timings),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Report:
        """Rebuild a report from ``to_dict()`` output (e.g. a saved report.json)."""
        return cls(
            dataset=d["dataset"], split=d["split"], n_images=int(d["n_images"]), n_captions=int(d["n_captions"]),
            ks=tuple(int(k) for k in d["ks"]), old_model=d["old_model"], new_model=d.get("new_model"),
            index=d["index"], old_old={dr: _ki(v) for dr, v in d["old_old"].items()},
            new_new=None if d.get("new_new") is None else {dr: _ki(v) for dr, v in d["new_new"].items()},
            methods={n: MethodResult.from_dict(m) for n, m in d.get("methods", {}).items()},
            timings=dict(d.get("timings", {})),
        )

    def to_json(self) -> str:
        """``to_dict()`` as indented JSON text."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def to_markdown(self) -> str:
        """The results as markdown: the Recall@K table, the flip/gap table, and a verdict per method."""
        ks = self.ks
        lines = [
            f"### Retrieval on {self.dataset} ({self.split}): {self.n_images:,} images, {self.n_captions:,} captions",
            "",
            f"old model `{self.old_model}` · new model `{self.new_model or '–'}` · search: {self.index} · Recall@K in %",
            "",
        ]
        head = ["row", "needs old encoder at query", "query cost vs bare new"]
        head += [f"I2T R@{k}" for k in ks] + [f"T2I R@{k}" for k in ks]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for label, rec in self.rows():
            m = next((m for n, m in self.methods.items() if label == f"new→old ({n})"), None)
            needs = ("yes" if m.requires_old_encoder else "no") if m is not None else ("no" if label == NEW_NEW else "–")
            if m is not None and m.query_cost:
                cost = " · ".join(f"{kind} {r:.2f}×" for kind, r in m.query_cost.items())
            else:
                cost = "1.00× (is the new model)" if label == NEW_NEW else "–"
            cells = [label, needs, cost] + [_pct(rec[d].get(k)) for d in DIRECTIONS for k in ks]
            lines.append("| " + " | ".join(cells) + " |")
        if self.methods:
            lines += ["", "Against old→old (Δ = new→old − old→old; PFR/NFR = positive/negative flip rate; "
                      "gap closure = Δ / (new→new − old→old)):", ""]
            head = ["method", "direction", "K", "Δ R@K", "PFR", "NFR", "PFR − NFR", "gap closure", "new→old > old→old"]
            lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            for name, m in self.methods.items():
                for d in DIRECTIONS:
                    for k in ks:
                        gc = m.gap_closure[d][k]
                        cells = [name, d.upper(), str(k), _pct(m.recall[d][k] - self.old_old[d][k]), _pct(m.pfr[d][k]),
                                 _pct(m.nfr[d][k]), _pct(m.delta[d][k]), "–" if gc is None else _num(gc),
                                 "yes" if m.compatible[d][k] else "no"]
                        lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
            for name, m in self.methods.items():
                wins = sum(v for per_k in m.compatible.values() for v in per_k.values())
                total = sum(len(per_k) for per_k in m.compatible.values())
                if m.backward_compatible:
                    why = "new→old is strictly above old→old at every K in both directions"
                else:
                    why = f"new→old is strictly above old→old at {wins} of {total} (direction, K) pairs; all are needed"
                lines.append(f"- **{name}**: backward compatible: **{'yes' if m.backward_compatible else 'no'}** ({why})")
            if any(m.query_cost for m in self.methods.values()):
                lines += ["", f"Query cost: time to encode the same sample (up to {COST_TEXTS} captions, {COST_IMAGES} images) with the "
                          "method divided by the bare new model's time (best of 3, uncached), from one run on this "
                          "machine: an indication, not a benchmark."]
        return "\n".join(lines) + "\n"

    def plot(self, path: str | os.PathLike) -> Path:
        """Draw Recall@K per row as grouped bars, one panel per direction; write a PNG to ``path``."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        rows = self.rows()
        fig = Figure(figsize=(5 + 1.2 * len(self.ks) * len(rows) / 3, 4), dpi=110)
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, 2, sharey=True)
        width = 0.8 / len(rows)
        x = np.arange(len(self.ks))
        for ax, d in zip(axes, DIRECTIONS):
            for r, (label, rec) in enumerate(rows):
                ax.bar(x + (r - (len(rows) - 1) / 2) * width, [100 * rec[d][k] for k in self.ks], width, label=label)
            ax.set_xticks(x, [f"R@{k}" for k in self.ks])
            ax.set_title(DIRECTION_LABELS[d])
            ax.grid(axis="y", alpha=0.3)
        axes[0].set_ylabel("Recall@K (%)")
        # The legend goes to the right of both panels so it never hides a bar.
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
        fig.suptitle(f"{self.dataset} ({self.split}): {self.n_images:,} images")
        fig.tight_layout()
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)

        def write(tmp: str) -> None:
            fig.savefig(tmp, format="png", bbox_inches="tight")

        _write_atomic(target, write)
        return target

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``report.json``, ``report.md`` and ``report.png`` into ``folder`` (each atomically)."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        for name, text in (("report.json", self.to_json()), ("report.md", self.to_markdown())):
            _write_atomic(out / name, lambda tmp, text=text: Path(tmp).write_text(text, encoding="utf-8"))
        self.plot(out / "report.png")
        return out


def _write_atomic(target: Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` on a sibling temp file, then rename it onto ``target``."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# ====================================================================== embedding


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
        """The adapter's old-space embeddings of the captions or images."""
        method = f"embed_{kind}s"
        plain = getattr(type(adapter), method, None) is getattr(Adapter, method)
        if plain and not getattr(adapter, "requires_old_encoder", False):
            # the stock path is project(query encoder's embeddings): reuse those if new->new has them
            return adapter.project(self.raw(adapter.query_encoder, kind))
        fn = getattr(adapter, method)
        opts = {"cache": self.cache, "verbose": self.verbose}
        if kind == "text":
            return fn(self.texts, **opts)
        return self._images(lambda chunk: fn(chunk, **opts))


def _query_cost(adapter: Adapter, ds: RetrievalDataset, texts: list[str], repeats: int = 3) -> dict[str, float]:
    """Adapter query time / bare new model time on the same sample of captions and images.

    The sample is the first ``COST_TEXTS`` captions and ``COST_IMAGES`` images; both paths run
    uncached, once to warm up and then ``repeats`` times interleaved; the ratio of the fastest
    times is returned. A ratio from one run on one machine: an indication, not a benchmark.
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
        best = [math.inf, math.inf]
        for _ in range(repeats):
            for j, fn in enumerate((bare, adapted)):
                t0 = time.perf_counter()
                fn(items)
                best[j] = min(best[j], time.perf_counter() - t0)
        out[kind] = round(best[1] / max(best[0], 1e-9), 3)
    return out


def _split_upgraded(upgraded: Any) -> tuple[dict[str, Adapter], CLIPEncoder]:
    if upgraded is None:
        raise XBTError("upgraded is None: pass an xbt.Adapter, a dict {name: Adapter}, or a new CLIP model (new→new only)")
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
    **dataset_kwargs: Any,
) -> Report:
    """Evaluate an upgrade on a retrieval dataset: old->old, new->old per method, new->new.

    Args:
        old: the model that embedded the gallery (``xbt.load_clip`` result or a raw CLIP model).
        upgraded: an ``xbt.Adapter`` (new->old and, with ``adapter.new``, new->new); a dict
            ``{method_name: Adapter}`` to compare several methods in one report (they must share
            one new model, which is embedded once); or a plain new model (new->new only).
        dataset: ``"toy"``, ``"flickr30k"``, ``"coco"``, ``"nocaps"`` or a ``RetrievalDataset``.
        split, root, source, limit, **dataset_kwargs: passed to ``xbt.datasets.load_dataset``.
        ks: the K of Recall@K.
        index: ``"flat"`` (exact inner product) or ``"ivf"`` (approximate; ``nlist``/``nprobe``).
        cache: embedding cache (``None`` default folder, ``False`` off, or a folder).
        device: where to run the models (CUDA when present by default).
        query_cost: time each adapter's query encoding against the bare new model.
        verbose: progress bars.

    Returns:
        a ``Report``. Galleries: new->old I2T searches adapter-embedded images against the OLD
        model's caption embeddings; new->old T2I searches adapter-embedded captions against the
        OLD model's image embeddings.
    """
    ds = dataset if isinstance(dataset, RetrievalDataset) else load_dataset(
        dataset, split=split, root=root, source=source, limit=limit, **dataset_kwargs)
    if isinstance(dataset, RetrievalDataset) and limit is not None:
        ds = ds.head(limit)
    ks = _check_ks(ks)
    old_enc = as_encoder(old)
    adapters, new_enc = _split_upgraded(upgraded)
    for name, a in adapters.items():
        if a.embed_dim != old_enc.embed_dim:
            raise XBTError(
                f"adapter {name!r} maps into a {a.embed_dim}-d space but the old model {old_enc.name} has "
                f"{old_enc.embed_dim}-d embeddings; pass the OLD model the adapter was trained for"
            )
        fp = a.old_info.get("fingerprint")
        if fp and fp != old_enc.fingerprint:
            warnings.warn(f"adapter {name!r} was trained for old model {a.old_info.get('name')!r}, whose weights differ "
                          f"from {old_enc.name}; new→old numbers may be meaningless", stacklevel=2)

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
        return {"i2t": recall_at_k(q_img, g_txt, img_owner, cap_owner, **opts),
                "t2i": recall_at_k(q_txt, g_img, cap_owner, img_owner, **opts)}

    t0 = time.perf_counter()
    base = both(old_img, old_txt, old_txt, old_img)
    ceiling = both(new_img, new_txt, new_txt, new_img)
    results = {n: both(qi, old_txt, qt, old_img) for n, (qi, qt) in method_emb.items()}
    timings["search_s"] = round(time.perf_counter() - t0, 3)

    def recall_of(r: dict[str, Retrieval]) -> dict[str, dict[int, float]]:
        return {d: r[d].recall for d in DIRECTIONS}

    old_old, new_new = recall_of(base), recall_of(ceiling)
    methods = {}
    for name, r in results.items():
        a = adapters[name]
        rec = recall_of(r)
        flips = {d: {k: flip_rates(base[d].hits[k], r[d].hits[k]) for k in ks} for d in DIRECTIONS}
        methods[name] = MethodResult(
            name=name,
            recall=rec,
            compatible={d: {k: rec[d][k] > old_old[d][k] for k in ks} for d in DIRECTIONS},
            pfr={d: {k: flips[d][k]["pfr"] for k in ks} for d in DIRECTIONS},
            nfr={d: {k: flips[d][k]["nfr"] for k in ks} for d in DIRECTIONS},
            delta={d: {k: flips[d][k]["delta"] for k in ks} for d in DIRECTIONS},
            gap_closure={d: {k: gap_closure(old_old[d][k], rec[d][k], new_new[d][k]) for k in ks} for d in DIRECTIONS},
            requires_old_encoder=bool(getattr(a, "requires_old_encoder", False)),
            query_cost=_query_cost(a, ds, emb.texts) if query_cost else None,
            info={"method": a.method, "repr": repr(a)},
        )
    index_label = "faiss exact inner product (IndexFlatIP)" if index == "flat" else \
        f"faiss IVF (IndexIVFFlat, nlist={nlist or '≈√n'}, nprobe={nprobe or 16}; approximate)"
    return Report(
        dataset=ds.name, split=ds.split, n_images=ds.n_images, n_captions=ds.n_captions, ks=ks,
        old_model=old_enc.name, new_model=new_enc.name, index=index_label,
        old_old=old_old, new_new=new_new, methods=methods, timings=timings,
    )

"""Exact and approximate nearest-neighbour search with FAISS, and Recall@K on its results.

One search, one tie rule, one recall: every Recall@K in xbt (the evaluator's, and the alpha
selection of query fusion) comes from ``recall_at_k`` here. ``block_search`` (``index="block"``) is
the same exact search in bounded memory for full-protocol galleries (31K images x 155K captions and
more): one BLAS product per block with a running top-k (``xbt.evaluation.scan``). ``cross_recall``
serves both directions of one image/caption gallery from those products, read by rows and by columns.

- Scores are inner products of float32 embeddings (cosine for the unit rows xbt produces).
- Ties: equal scores are ordered by gallery index, ascending - the order of a stable argsort of
  the negated scores. Ties are real (duplicate captions embed identically).
- K larger than the gallery is clipped to the gallery size, so every query whose target is in the
  gallery is a hit there.
- A query hits at K when a gallery item with the same owner id is in its top K; ``first_hit`` is
  the 0-based rank of its first such item.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..core.errors import XBTError
from .scan import SCORE_SLACK, exact_scores, scan


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
        raise XBTError(
            f"unknown index {index!r}; use 'flat' (exact), 'block' (exact, bounded memory) or 'ivf' (approximate)"
        )
    idx.add(gallery)
    return idx


def search(
    queries: Any, gallery: Any, k: int, index: str = "flat", nlist: int | None = None, nprobe: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` gallery rows for each query by inner product: ``(scores, ids)``, each [n_queries, k'].

    ``k' = min(k, len(gallery))``. Rows are sorted by score, descending, and equal scores by gallery
    index, ascending, so the result matches a stable argsort of the negated scores (ties are real:
    duplicate captions embed identically). ``"flat"``: FAISS finds the candidates and every score
    returned is exact (``_exact_block``), so neither FAISS's order among ties nor its float32 sums
    (which, under some OpenBLAS builds, change with a row's position) decide a rank. ``"ivf"``: FAISS's
    scores, re-sorted, the rare rows with a tie across rank k recomputed with numpy; rows may end in
    id -1 (fewer than ``k`` candidates in the probed cells), which count as misses.
    """
    if index == "block":
        return block_search(queries, gallery, k)
    q = _as_matrix(queries, "queries")
    g = _as_matrix(gallery, "gallery")
    if q.shape[1] != g.shape[1]:
        raise XBTError(
            f"queries are {q.shape[1]}-d but the gallery is {g.shape[1]}-d; embed both in the same space "
            "(new->old queries must come from the adapter, not the bare new model)"
        )
    if k < 1:
        raise XBTError(f"k must be >= 1, got {k}")
    if index == "flat":
        return _exact_block(q, g, int(k))
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


def _exact_block(q: np.ndarray, g: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``min(k, len(g))`` of ``g`` per query with the tie rule, every score exact (``exact_scores``).

    FAISS finds candidates; their scores are recomputed exactly and sorted by (score, index). A
    row FAISS left out scores at most the last candidate's FAISS score plus ``SCORE_SLACK``; rows
    where that could still reach the k-th exact score are searched again with twice the depth, so
    the result does not depend on FAISS's kernels (whose float32 sums, under some OpenBLAS builds,
    change with a row's position in the block).
    """
    idx = build_index(g)
    k = min(k, len(g))
    out_s, out_i = np.empty((len(q), k), dtype=np.float32), np.empty((len(q), k), dtype=np.int64)
    rows, depth = np.arange(len(q)), min(k + 1, len(g))
    while len(rows):
        approx, ids = idx.search(q[rows], depth)
        exact = exact_scores(q[rows], g, ids)
        order = np.lexsort((ids, -exact), axis=-1)[:, :k]
        out_s[rows], out_i[rows] = np.take_along_axis(exact, order, -1), np.take_along_axis(ids, order, -1)
        if depth == len(g):
            break
        rows = rows[approx[:, -1] + SCORE_SLACK >= out_s[rows, -1]]
        depth = min(2 * depth, len(g))
    return out_s, out_i


def block_search(
    queries: Any, gallery: Any, k: int, query_block: int = 4096, gallery_block: int = 16_384
) -> tuple[np.ndarray, np.ndarray]:
    """``search`` (exact inner product, same tie rule) in bounded memory: ``(scores, ids)`` [n_queries, k'].

    One BLAS product per ``query_block`` x ``gallery_block`` rows, a running top-k per query, every
    score kept exact: ``xbt.evaluation.scan.scan`` with its rows only. Memory is a block of each side,
    the block's scores and the outputs, whatever the gallery size; both may be ``np.memmap`` arrays that
    never enter memory whole. ``cross_recall`` reads the same products for both directions at once.
    """
    return scan(queries, gallery, k, cols=False, a_block=query_block, b_block=gallery_block)[0]


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

    @property
    def mrr(self) -> float:
        """Mean reciprocal rank of the first hit, truncated at ``max(ks)`` (a miss there counts 0)."""
        return float(np.where(self.first_hit >= 0, 1.0 / (np.maximum(self.first_hit, 0) + 1.0), 0.0).mean())


def check_ks(ks: Sequence[int] | int) -> tuple[int, ...]:
    """``ks`` as a sorted tuple of distinct positive ints, or an ``XBTError``."""
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
        index, nlist, nprobe: FAISS index choice, see ``build_index``; ``index="block"``: the exact
            search in bounded memory of ``block_search`` (same tie rule), for galleries of 100K+ items.

    Returns:
        a ``Retrieval`` holding per-query hits (for flip rates) and ``recall``.
    """
    if index == "block":  # read in blocks as they are: no float32 copy of the whole gallery
        q, g = (x if hasattr(x, "shape") else np.asarray(x, dtype=np.float32) for x in (query_emb, gallery_emb))
    else:
        q, g = _as_matrix(query_emb, "query_emb"), _as_matrix(gallery_emb, "gallery_emb")
    qo = _as_owner(query_owner, q.shape[0], "query_owner")
    go = _as_owner(gallery_owner, g.shape[0], "gallery_owner")
    ks = check_ks(ks)
    _, ids = search(q, g, max(ks), index, nlist, nprobe)
    return _retrieval(ids, qo, go, ks)


def _retrieval(ids: np.ndarray, query_owner: np.ndarray, gallery_owner: np.ndarray, ks: tuple[int, ...]) -> Retrieval:
    """Hits of each query from its top ids [n, k'] (int64, -1 a miss) and the owner ids of both sides."""
    match = (ids >= 0) & (gallery_owner[np.clip(ids, 0, None)] == query_owner[:, None])
    first = np.where(match.any(axis=1), match.argmax(axis=1), -1).astype(np.int64)
    hits = {k: (first >= 0) & (first < k) for k in ks}
    return Retrieval(ks, first, hits)


def cross_recall(
    images: Any,
    captions: Any,
    image_owner: Any,
    caption_owner: Any,
    ks: Sequence[int] = (1, 5, 10),
    verbose: bool = False,
) -> tuple[Retrieval, Retrieval]:
    """Image->text and text->image ``Retrieval`` of one gallery whose images and captions are both queries and
    gallery (old->old, new->new), from one image x caption product per block (``xbt.evaluation.scan``).

    ``images`` [n_images, d], ``captions`` [n_captions, d]: float32 unit rows (tensors, arrays or ``np.memmap``,
    read in blocks); owners as in ``recall_at_k``. The hits are those of ``recall_at_k`` in each direction (the
    same exact scores and tie rule), at about the cost of one direction.
    """
    ks = check_ks(ks)
    io = _as_owner(image_owner, images.shape[0], "image_owner")
    co = _as_owner(caption_owner, captions.shape[0], "caption_owner")
    (_, i2t), (_, t2i) = scan(images, captions, max(ks), names=("images", "captions"), verbose=verbose)
    return _retrieval(i2t, io, co, ks), _retrieval(t2i, co, io, ks)

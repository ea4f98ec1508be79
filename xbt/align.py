"""Training-free maps from the new embedding space to the old one, and query fusion.

Pure tensor math, no models: these functions take paired embeddings ([n, d_new] and [n, d_old],
float32, L2-normalised rows) and return a map or a fused query. ``xbt.baselines`` wires them to
encoders and wraps them as ``Adapter``s; stage 1 starts its projection from
``orthogonal_procrustes``.

- ``orthogonal_procrustes``: the rotation (semi-orthogonal for unequal widths) new -> old;
- ``ridge_map``: an unconstrained linear map by ridge-regularised least squares;
- ``slerp`` / ``nlerp`` / ``fuse_embeddings``: blend the OLD model's query with the aligned new
  query (weight ``alpha`` on the new one);
- ``retrieval_scores`` / ``select_alpha``: Recall@1 (and MRR) on a support set, and the alpha
  chosen by it over ``ALPHA_GRID``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import XBTError


def _check_pair(source: torch.Tensor, target: torch.Tensor) -> None:
    if source.ndim != 2 or target.ndim != 2:
        raise XBTError(f"embeddings must be 2-D [n, d]; got shapes {tuple(source.shape)} and {tuple(target.shape)}")
    if source.shape[0] != target.shape[0]:
        raise XBTError(
            f"paired embeddings need the same number of rows: new has {source.shape[0]}, old has {target.shape[0]}; "
            "embed the same items with both models"
        )
    if source.shape[0] == 0:
        raise XBTError("cannot fit a map on zero pairs: pass a non-empty support set")


def orthogonal_procrustes(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The (semi-)orthogonal ``W`` [d_target, d_source] minimising ||source @ W.T - target||_F.

    Works for unequal dims: it is the classic solution after zero-padding the smaller side, with
    the padded coordinates dropped. With d_target <= d_source the rows of ``W`` are orthonormal
    (W W^T = I); otherwise its columns are (W^T W = I).
    """
    _check_pair(source, target)
    m = target.double().T @ source.double()  # [d_t, d_s]
    u, _, vh = torch.linalg.svd(m, full_matrices=False)
    return (u @ vh).float()


def ridge_map(source: torch.Tensor, target: torch.Tensor, ridge: float = 0.1) -> torch.Tensor:
    """The ridge-regularised least-squares ``W`` [d_target, d_source]: ``source @ W.T ~ target``.

    Closed form ``W = Y^T X (X^T X + lambda I)^-1`` with ``X = source``, ``Y = target``, solved in
    float64. ``ridge`` is *relative*: ``lambda = ridge * trace(X^T X) / d_source``, i.e. a fraction
    of the mean eigenvalue of ``X^T X`` (``n / d`` for unit rows), so one value means the same
    shrinkage for any support size and width. It matters because CLIP embeddings of one modality
    fill a narrow cone: directions the support set barely varies along get near-zero eigenvalues,
    and an unregularised map blows noise up along exactly the directions in which the *other*
    modality (images, when fitted on texts) differs. ``ridge=0`` is plain least squares (needs
    ``n >= d_source`` and full rank); the default 0.1 is ``xbt.baselines.DEFAULT_RIDGE``, measured
    there. There is no bias term: outputs are L2-normalised downstream,
    and an offset would be fitted to the support modality only.
    """
    _check_pair(source, target)
    if not ridge >= 0:  # also catches NaN
        raise XBTError(f"ridge must be >= 0, got {ridge}; use a small positive value such as 0.1")
    x, y = source.double(), target.double()
    gram = x.T @ x  # [d_s, d_s]
    lam = ridge * gram.diagonal().sum() / x.shape[1]
    a = gram + lam * torch.eye(x.shape[1], dtype=x.dtype)
    try:
        # W^T = (X^T X + lambda I)^-1 X^T Y; solve instead of inverting, for accuracy
        w_t = torch.linalg.solve(a, x.T @ y)
    except RuntimeError as exc:  # torch.linalg.LinAlgError is a RuntimeError
        raise XBTError(
            f"the least-squares system is singular ({x.shape[0]} support rows, {x.shape[1]} dims, ridge={ridge}); "
            "pass a positive ridge= (e.g. 0.1) or a larger support set"
        ) from exc
    return w_t.T.float()


# ---------------------------------------------------------------------- query fusion

#: the alphas tried when choosing the fusion weight on a support set: 0, 0.1, ..., 1.
ALPHA_GRID: tuple[float, ...] = tuple(round(i / 10, 1) for i in range(11))

FUSION_KINDS = ("slerp", "nlerp")

# Below this sin(angle) between the two queries SLERP's weights are 0/0-like; NLERP is the same
# curve to first order there, so it is used instead.
_PARALLEL_EPS = 1e-4


def _check_fusion_inputs(a: torch.Tensor, b: torch.Tensor, alpha: float) -> None:
    if a.shape != b.shape:
        raise XBTError(
            f"fusion needs two embeddings of the same shape, got {tuple(a.shape)} (old) and {tuple(b.shape)} (aligned new); "
            "map the new query into the old space first"
        )
    if not 0.0 <= float(alpha) <= 1.0:
        raise XBTError(f"fusion weight alpha must lie in [0, 1], got {alpha}")


def _fusion_endpoint(a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor | None:
    """Check the fusion inputs; at ``alpha`` 0 or 1 return a copy of ``a`` or ``b`` exactly, else None."""
    _check_fusion_inputs(a, b, alpha)
    if float(alpha) == 0.0:
        return a.clone()
    if float(alpha) == 1.0:
        return b.clone()
    return None


def nlerp(a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
    """Normalised linear interpolation ``normalize((1 - alpha) a + alpha b)`` of unit rows [n, d].

    ``alpha=0`` returns ``a`` and ``alpha=1`` returns ``b`` exactly (copies, no renormalisation).
    Two antipodal rows at ``alpha=0.5`` have no defined midpoint; the result is then arbitrary.
    """
    end = _fusion_endpoint(a, b, alpha)
    if end is not None:
        return end
    alpha = float(alpha)
    return F.normalize((1.0 - alpha) * a + alpha * b, dim=-1)


def slerp(a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
    """Spherical linear interpolation between unit rows ``a`` and ``b`` [n, d]: float32 unit rows.

    ``(sin((1-alpha) theta) a + sin(alpha theta) b) / sin(theta)`` with ``theta`` the angle between
    the rows: the point a fraction ``alpha`` of the way along the great circle from ``a`` to ``b``.
    ``alpha=0`` returns ``a`` and ``alpha=1`` returns ``b`` exactly. Rows that are (nearly) parallel
    fall back to NLERP, which is the same point to first order and has no 0/0.
    """
    end = _fusion_endpoint(a, b, alpha)
    if end is not None:
        return end
    alpha = float(alpha)
    a64, b64 = a.double(), b.double()
    cos = (a64 * b64).sum(-1, keepdim=True).clamp(-1.0, 1.0)
    theta = torch.arccos(cos)
    sin = torch.sin(theta)
    parallel = sin < _PARALLEL_EPS
    safe_sin = torch.where(parallel, torch.ones_like(sin), sin)
    out = (torch.sin((1 - alpha) * theta) * a64 + torch.sin(alpha * theta) * b64) / safe_sin
    out = torch.where(parallel, (1 - alpha) * a64 + alpha * b64, out)
    # renormalise: removes rounding drift, and makes the NLERP fallback rows unit too
    return F.normalize(out, dim=-1).to(a.dtype)


def fuse_embeddings(old: torch.Tensor, new: torch.Tensor, alpha: float, kind: str = "slerp") -> torch.Tensor:
    """Fuse the old model's query ``old`` with the aligned new query ``new`` ([n, d_old] unit rows).

    ``kind`` is ``"slerp"`` or ``"nlerp"``; ``alpha=0`` gives the old query, ``alpha=1`` the new one.
    """
    if kind == "slerp":
        return slerp(old, new, alpha)
    if kind == "nlerp":
        return nlerp(old, new, alpha)
    raise XBTError(f"unknown fusion kind {kind!r}; choose one of {list(FUSION_KINDS)}")


def retrieval_scores(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    query_labels: torch.Tensor | None = None,
    gallery_labels: torch.Tensor | None = None,
    chunk: int = 1024,
) -> tuple[float, float]:
    """Recall@1 and mean reciprocal rank of ``queries`` [m, d] searched by cosine in ``gallery`` [g, d].

    A gallery item is correct for a query when their labels match; without labels, query ``i``'s
    only correct item is gallery row ``i`` (needs m == g). Labels let several items count (several
    captions of one image, or duplicate captions). The rank of a query is 1 + the number of gallery
    items scoring strictly above its best correct item, so ties are resolved in the query's favour.
    """
    if query_labels is None or gallery_labels is None:
        if len(queries) != len(gallery):
            raise XBTError(
                f"without labels query i must match gallery row i, but there are {len(queries)} queries and "
                f"{len(gallery)} gallery rows; pass query_labels and gallery_labels"
            )
        query_labels = gallery_labels = torch.arange(len(queries))
    query_labels, gallery_labels = torch.as_tensor(query_labels), torch.as_tensor(gallery_labels)
    if len(query_labels) != len(queries) or len(gallery_labels) != len(gallery):
        raise XBTError("need one label per query and one per gallery row")
    if len(queries) == 0 or len(gallery) == 0:
        raise XBTError("cannot score retrieval with an empty query set or gallery")
    hits, rr = 0, 0.0
    g = gallery.float()
    for s in range(0, len(queries), chunk):
        q = queries[s : s + chunk].float()
        scores = q @ g.T  # [c, g]
        correct = query_labels[s : s + chunk, None] == gallery_labels[None, :]
        if not correct.any(dim=1).all():
            missing = int((~correct.any(dim=1)).nonzero()[0]) + s
            raise XBTError(f"query {missing} has no correct item in the gallery; check the labels")
        best_correct = scores.masked_fill(~correct, float("-inf")).max(dim=1).values
        rank = 1 + (scores > best_correct[:, None]).sum(dim=1)
        hits += int((rank == 1).sum())
        rr += float((1.0 / rank.double()).sum())
    return hits / len(queries), rr / len(queries)


def select_alpha(
    old_query: torch.Tensor,
    new_query: torch.Tensor,
    gallery: torch.Tensor,
    query_labels: torch.Tensor | None = None,
    gallery_labels: torch.Tensor | None = None,
    kind: str = "slerp",
    grid: tuple[float, ...] = ALPHA_GRID,
) -> tuple[float, dict[str, dict[str, float]]]:
    """Choose the fusion weight for one direction by Recall@1 on a SUPPORT set.

    Args:
        old_query: the old model's embeddings of the support queries [m, d_old], unit rows.
        new_query: the aligned new-model embeddings of the same queries [m, d_old], unit rows.
        gallery: OLD-model embeddings of the support gallery [g, d_old] (what the old index holds).
        query_labels, gallery_labels: which gallery rows are correct for which query (see
            ``retrieval_scores``); default: row ``i`` for query ``i``.
        kind: ``"slerp"`` or ``"nlerp"``.
        grid: the alphas to try (default 0, 0.1, ..., 1).

    Returns:
        ``(alpha, curve)``: the alpha with the highest Recall@1 (ties: higher mean reciprocal rank,
        then the smaller alpha), and ``curve[str(alpha)] = {"recall_at_1": ..., "mrr": ...}``.

    Only tensors go in: the caller decides what the support set is, and this function cannot reach
    any other data, so evaluation queries never influence the choice as long as the caller passes
    support data (``xbt.baselines`` passes the fit-time pairs and nothing else).
    """
    if not grid:
        raise XBTError("the alpha grid is empty; pass values in [0, 1] such as xbt.align.ALPHA_GRID")
    if old_query.shape != new_query.shape:
        raise XBTError(f"old and new support queries differ in shape: {tuple(old_query.shape)} vs {tuple(new_query.shape)}")
    curve: dict[str, dict[str, float]] = {}
    best: tuple[float, float, float] | None = None  # (recall, mrr, -alpha): max wins
    best_alpha = float(grid[0])
    for alpha in grid:
        fused = fuse_embeddings(old_query, new_query, float(alpha), kind)
        r1, mrr = retrieval_scores(fused, gallery, query_labels, gallery_labels)
        curve[str(float(alpha))] = {"recall_at_1": r1, "mrr": mrr}
        key = (r1, mrr, -float(alpha))
        if best is None or key > best:
            best, best_alpha = key, float(alpha)
    return best_alpha, curve

"""Query fusion: blend the OLD model's query with the aligned new query, and choose the blend.

Pure tensor math on [n, d_old] float32 unit rows, no models:

- ``slerp`` / ``nlerp`` / ``fuse_embeddings``: the fused query, with weight ``alpha`` on the
  aligned new query (0 gives the old query exactly, 1 the new one);
- ``select_alpha``: the weight with the best Recall@1 (then MRR@10) on a support set, over
  ``ALPHA_GRID``, measured by ``xbt.search.recall_at_k`` - the evaluator's own recall and tie rule;
- ``pair_groups``: which support pairs count as matches of each other (shared caption or image).

``xbt.adapter.FusionAdapter`` applies a fusion per query modality; ``xbt.fit.fuse`` chooses its
weights on image-caption pairs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .errors import XBTError
from .search import recall_at_k

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


def check_alpha(name: str, value: Any) -> float:
    """``value`` as a float in [0, 1], or an ``XBTError`` naming ``name``."""
    try:
        alpha = float(value)
    except (TypeError, ValueError):
        raise XBTError(f"{name} must be a number in [0, 1], got {value!r}") from None
    if not 0.0 <= alpha <= 1.0:
        raise XBTError(f"{name} must lie in [0, 1] (0 = old query, 1 = aligned new query), got {value}")
    return alpha


def models_run(alpha: float) -> list[str]:
    """The models a fused query runs at weight ``alpha``: both inside (0, 1), one at an endpoint."""
    return (["new"] if alpha > 0 else []) + (["old"] if alpha < 1 else [])


#: the depth of the MRR that breaks Recall@1 ties in ``select_alpha``
MRR_DEPTH = 10


def _support_labels(m: int, g: int, query_labels, gallery_labels) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels for ``select_alpha``: given ones checked, else row ``i`` <-> query ``i``."""
    if query_labels is None or gallery_labels is None:
        if m != g:
            raise XBTError(
                f"without labels query i must match gallery row i, but there are {m} queries and {g} gallery rows; "
                "pass query_labels and gallery_labels"
            )
        return torch.arange(m), torch.arange(g)
    query_labels, gallery_labels = torch.as_tensor(query_labels), torch.as_tensor(gallery_labels)
    if len(query_labels) != m or len(gallery_labels) != g:
        raise XBTError("need one label per query and one per gallery row")
    if m == 0 or g == 0:
        raise XBTError("cannot score retrieval with an empty query set or gallery")
    missing = ~torch.isin(query_labels, gallery_labels)
    if missing.any():
        raise XBTError(f"query {int(missing.nonzero()[0])} has no correct item in the gallery; check the labels")
    return query_labels, gallery_labels


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
        query_labels, gallery_labels: integer labels; a gallery row is correct for a query when
            their labels match (several captions of one image, duplicate captions); default: row
            ``i`` for query ``i``. Every query needs a correct row.
        kind: ``"slerp"`` or ``"nlerp"``.
        grid: the alphas to try (default 0, 0.1, ..., 1).

    Returns:
        ``(alpha, curve)``: the alpha with the highest Recall@1 (ties: higher MRR@10, the mean
        reciprocal rank of the first correct row within the top 10, then the smaller alpha), and
        ``curve[str(alpha)] = {"recall_at_1": ..., "mrr": ...}`` (``mrr`` is MRR@10).
        Recall comes from ``xbt.search.recall_at_k`` (exact FAISS search, ties to the lower gallery
        index), the evaluator's own.

    Only tensors go in: the caller decides what the support set is, and this function cannot reach
    any other data, so evaluation queries never influence the choice as long as the caller passes
    support data (``xbt.fit.fuse`` passes the fit-time pairs and nothing else).
    """
    if not grid:
        raise XBTError("the alpha grid is empty; pass values in [0, 1] such as xbt.fusion.ALPHA_GRID")
    if old_query.shape != new_query.shape:
        raise XBTError(f"old and new support queries differ in shape: {tuple(old_query.shape)} vs {tuple(new_query.shape)}")
    query_labels, gallery_labels = _support_labels(len(old_query), len(gallery), query_labels, gallery_labels)
    curve: dict[str, dict[str, float]] = {}
    best: tuple[float, float, float] | None = None  # (recall, mrr, -alpha): max wins
    best_alpha = float(grid[0])
    for alpha in grid:
        fused = fuse_embeddings(old_query, new_query, float(alpha), kind)
        found = recall_at_k(fused, gallery, query_labels, gallery_labels, ks=(1, MRR_DEPTH))
        r1, mrr = found.recall[1], found.mrr
        curve[str(float(alpha))] = {"recall_at_1": r1, "mrr": mrr}
        key = (r1, mrr, -float(alpha))
        if best is None or key > best:
            best, best_alpha = key, float(alpha)
    return best_alpha, curve


def image_ids(images: Sequence[Image.Image]) -> np.ndarray:
    """Int ids [n]: rows holding an identical image (same mode, size and pixels) share an id, the
    row index of its first occurrence. One-row-per-caption datasets repeat each image."""
    first: dict[str, int] = {}
    return np.array([first.setdefault(_image_key(im), i) for i, im in enumerate(images)], dtype=np.int64)


def _image_key(image: Image.Image) -> str:
    return hashlib.sha1(f"{image.mode}{image.size}".encode() + image.tobytes()).hexdigest()


def pair_groups(images: Sequence[Image.Image], captions: Sequence[str]) -> torch.Tensor:
    """Group ids [n] for support pairs: pairs sharing a caption (case/space-insensitive) or an
    identical image get one id, so retrieving any of them counts as a hit.

    Datasets with one row per (image, caption) repeat images, and short captions repeat across
    images; without grouping those would count as misses and bias the alpha choice.
    """
    parent = list(range(len(captions)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[tuple[str, str], int] = {}
    for i, (image_id, caption) in enumerate(zip(image_ids(images), captions)):
        for key in (("caption", " ".join(caption.lower().split())), ("image", str(image_id))):
            j = first.setdefault(key, i)
            parent[find(i)] = find(j)
    return torch.tensor([find(i) for i in range(len(captions))])

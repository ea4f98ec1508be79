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

from collections.abc import Sequence

import torch
from PIL import Image

from ..adapters.fusion import fuse_embeddings
from ..core.errors import XBTError
from ..core.hashing import image_ids
from ..evaluation.search import recall_at_k

#: the alphas tried when choosing the fusion weight on a support set: 0, 0.1, ..., 1.
ALPHA_GRID: tuple[float, ...] = tuple(round(i / 10, 1) for i in range(11))


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
        raise XBTError(
            f"old and new support queries differ in shape: {tuple(old_query.shape)} vs {tuple(new_query.shape)}"
        )
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

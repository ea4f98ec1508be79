"""The training losses of both XBT stages, on float32 unit-row embeddings (pure tensor math).

- ``info_nce``: symmetric InfoNCE between matched rows of two batches (row ``i`` of ``a`` and of
  ``b`` are a pair; every other row is a negative) - stage 1's main term and stage 2's pair and
  old-image terms;
- ``cosine_gap``: ``1 - mean cosine`` of matched rows, pulling pairs together in absolute terms
  (InfoNCE alone is rank-only);
- ``stage1_loss``: ``info_nce + cosine_weight * cosine_gap``;
- ``caption_ranking``: cross-entropy ranking each image's own caption among a caption bank,
  weighted per pair; ``pair_confidence`` gives stage 2's weights (how sure a model is of a pair).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE of matched rows ``a[i]`` <-> ``b[i]`` ([n, d] each): a scalar.

    ``0.5 * (CE(a b^T / t, i) + CE(b a^T / t, i))``: each row must pick its partner among the
    other batch's rows, in both directions.
    """
    logits = a @ b.T / temperature
    labels = torch.arange(len(a), device=a.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def cosine_gap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``1 - mean_i cos(a[i], b[i])`` for unit rows [n, d]: 0 when every pair coincides."""
    return 1 - (a * b).sum(-1).mean()


def stage1_loss(pred: torch.Tensor, target: torch.Tensor, temperature: float, cosine_weight: float) -> torch.Tensor:
    """Stage 1: symmetric InfoNCE between projected and target rows plus ``cosine_weight`` x cosine gap."""
    return info_nce(pred, target, temperature) + cosine_weight * cosine_gap(pred, target)


def caption_ranking(queries: torch.Tensor, bank: torch.Tensor, targets: torch.Tensor, temperature: float,
                    weights: torch.Tensor) -> torch.Tensor:
    """Weighted cross-entropy ranking row ``targets[i]`` of ``bank`` [m, d] first for query ``i`` [n, d].

    ``mean_i weights[i] * CE(queries[i] bank^T / temperature, targets[i])``: image->text search
    against a fixed caption bank, each pair counting as much as its weight.
    """
    ranking = F.cross_entropy(queries @ bank.T / temperature, targets, reduction="none")
    return (weights * ranking).mean()


@torch.no_grad()
def pair_confidence(image_emb: torch.Tensor, text_emb: torch.Tensor, temperature: float, chunk: int = 4096) -> torch.Tensor:
    """For each pair ``i``: the probability a model gives caption ``i`` among all rows of ``text_emb`` for image ``i``.

    ``softmax(image_emb[i] @ text_emb.T / temperature)[i]``, float [n_images]: ``text_emb`` holds the
    pair captions first (row ``i`` is image ``i``'s caption), then any further bank captions.
    Computed in chunks of rows so that a large pair set never builds the full score matrix. Inputs
    are unit rows of the same model. A vague caption ("one shape: a star") matches many images and
    gets a low value; a caption that singles its image out gets a high one.
    """
    out = []
    for start in range(0, len(image_emb), chunk):
        logits = image_emb[start : start + chunk] @ text_emb.T / temperature
        rows = torch.arange(len(logits), device=logits.device)
        out.append((logits[rows, rows + start] - torch.logsumexp(logits, dim=-1)).exp())
    return torch.cat(out)

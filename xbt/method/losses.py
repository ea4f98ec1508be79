"""The training losses of both XBT stages, on float32 unit-row embeddings (pure tensor math).

- ``info_nce``: symmetric InfoNCE between matched rows of two batches (row ``i`` of ``a`` and of
  ``b`` are a pair; every other row is a negative) - stage 1's main term and stage 2's pair and
  old-image terms;
- ``multi_positive_nce``: InfoNCE where a query has several right items (an image and all its
  captions) - stage 2's image head;
- ``cosine_gap``: ``1 - mean cosine`` of matched rows, pulling pairs together in absolute terms
  (InfoNCE alone is rank-only);
- ``stage1_loss``: ``info_nce + cosine_weight * cosine_gap``;
- ``caption_ranking``: cross-entropy ranking each image's own caption among a caption bank,
  weighted per pair; ``pair_confidence`` gives stage 2's weights (how sure a model is of a pair);
- ``ranking_distillation``: KL from a teacher's ranking of a gallery to a student's ranking of the
  same items elsewhere (stage 2 copies the new model's own ranking into the old space);
- ``pseudo_captions``: the extra positives of the image head's ``captions`` loss;
- ``spread_temperature``: a softmax temperature read from how far apart the vectors it ranks lie (both heads).
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


def multi_positive_nce(
    queries: torch.Tensor, gallery: torch.Tensor, positive: torch.Tensor, temperature: float
) -> torch.Tensor:
    """InfoNCE with several right items per query: a scalar.

    ``mean_i [logsumexp_j s_ij - logsumexp_{j positive} s_ij]`` with ``s = queries gallery^T / temperature``
    ([n, d] and [m, d] unit rows; ``positive`` bool [n, m], at least one True per row): each query must
    place its right items (an image's several captions) above the rest, without them competing.
    """
    logits = queries @ gallery.T / temperature
    right = torch.logsumexp(logits.masked_fill(~positive.to(logits.device), float("-inf")), dim=1)
    return (torch.logsumexp(logits, dim=1) - right).mean()


def cosine_gap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``1 - mean_i cos(a[i], b[i])`` for unit rows [n, d]: 0 when every pair coincides."""
    return 1 - (a * b).sum(-1).mean()


def stage1_loss(pred: torch.Tensor, target: torch.Tensor, temperature: float, cosine_weight: float) -> torch.Tensor:
    """Stage 1: symmetric InfoNCE between projected and target rows plus ``cosine_weight`` x cosine gap."""
    return info_nce(pred, target, temperature) + cosine_weight * cosine_gap(pred, target)


def caption_ranking(
    queries: torch.Tensor, bank: torch.Tensor, targets: torch.Tensor, temperature: float, weights: torch.Tensor
) -> torch.Tensor:
    """Weighted cross-entropy ranking row ``targets[i]`` of ``bank`` [m, d] first for query ``i`` [n, d].

    ``mean_i weights[i] * CE(queries[i] bank^T / temperature, targets[i])``: image->text search
    against a fixed caption bank, each pair counting as much as its weight.
    """
    ranking = F.cross_entropy(queries @ bank.T / temperature, targets, reduction="none")
    return (weights * ranking).mean()


def ranking_distillation(
    student: torch.Tensor,
    student_gallery: torch.Tensor,
    student_temperature: float,
    teacher: torch.Tensor,
    teacher_gallery: torch.Tensor,
    teacher_temperature: float,
) -> torch.Tensor:
    """``KL(softmax(teacher teacher_gallery^T / t_T) || softmax(student student_gallery^T / t_S))``, batch mean.

    Row ``i`` of both galleries is the same item (a caption, an image) in two spaces: the teacher
    ranks it in its own space ([n, d_T] queries, [m, d_T] gallery), the student must rank it alike in
    another ([n, d_S], [m, d_S]). Unlike a one-hot ranking loss, every item of the gallery carries a
    target, so a few hundred queries still give a dense signal.
    """
    with torch.no_grad():
        target = F.softmax(teacher @ teacher_gallery.T / teacher_temperature, dim=1)
    return F.kl_div(
        F.log_softmax(student @ student_gallery.T / student_temperature, dim=1), target, reduction="batchmean"
    )


@torch.no_grad()
def pair_confidence(
    image_emb: torch.Tensor, text_emb: torch.Tensor, temperature: float, chunk: int = 4096
) -> torch.Tensor:
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


@torch.no_grad()
def pseudo_captions(
    images_new: torch.Tensor, texts_new: torch.Tensor, texts_old: torch.Tensor, m: int
) -> torch.Tensor:
    """The OLD vectors of the ``m`` texts the NEW model ranks highest for each image: float32 [n, m, d_old].

    ``images_new`` [n, d_new], ``texts_new`` [k, d_new] and ``texts_old`` [k, d_old] are unit rows (row ``j`` one
    text under both models). One caption describes an image partially; the better NEW model names more that fit
    it, and their OLD vectors are where the old gallery keeps such descriptions. Stage 2 passes the stage-1 texts
    less the pair captions: a caption memory, to be measured with the test captions removed from it.
    """
    ids = torch.cat([(b @ texts_new.T).topk(min(m, len(texts_new)), dim=1).indices for b in images_new.split(1024)])
    return texts_old[ids]


@torch.no_grad()
def agreed_texts(
    images_new: torch.Tensor, images_old: torch.Tensor, texts_new: torch.Tensor, texts_old: torch.Tensor, m: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The texts BOTH models rank among their ``m`` best for each image: (OLD vectors [r, d_old], int64 image [r]).

    ``images_new`` [n, d_new] / ``images_old`` [n, d_old] are the same images under both models; ``texts_*`` one
    text per row under both. With one caption per image, a held-out image->caption search judges a description
    that is partial; the texts both models agree fit the image complete it for the check against the old model,
    favouring neither side (the NEW model's picks alone would favour the adapter trained on them).
    """
    k = min(m, len(texts_new))
    rows, owner = [], []
    for s in range(0, len(images_new), 1024):
        new_ids = (images_new[s : s + 1024] @ texts_new.T).topk(k, dim=1).indices
        old_ids = (images_old[s : s + 1024] @ texts_old.T).topk(k, dim=1).indices
        both = (new_ids[:, :, None] == old_ids[:, None, :]).any(2)  # [b, k]: new picks the old model shares
        image, slot = both.nonzero(as_tuple=True)
        rows.append(new_ids[image, slot])
        owner.append(image + s)
    ids, owner = torch.cat(rows), torch.cat(owner)
    return texts_old[ids], owner


def spread_temperature(vectors: torch.Tensor | None, factor: float, sample: int = 2000) -> float:
    """``factor`` x the standard deviation of the cosine similarities between ``vectors`` (float32 [n, d] unit rows;
    the first ``sample`` of them), or 0.02 where fewer than two are given (the value both toy worlds get).

    A softmax over these vectors should be as sharp as they are spread: the same temperature would be too soft
    for a model that packs its vectors close (a real CLIP, logit scale 100) and too sharp for one that spreads
    them (the toy shapes CLIP, 19). Stage 2 reads the OLD caption vectors for the image head and the OLD image
    vectors for the text head's pair-caption search.
    """
    if vectors is None or len(vectors) < 2:
        return 0.02
    x = vectors[:sample].float()
    upper = torch.triu_indices(len(x), len(x), offset=1)
    return factor * float((x @ x.T)[upper[0], upper[1]].std())

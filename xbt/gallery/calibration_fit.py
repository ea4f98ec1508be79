"""Fitting a ``ScoreCalibration`` on image–caption pairs laid out as the gallery is (``calibration_set``).

``fit_calibration`` searches, per backfilled fraction, the map (scale, shift, per-query normalisation) and the
fusion weight of the backfilled items' old-space scores whose merged search stays furthest above the straight
line between not backfilling and a full backfill, on random mixes of the pairs. What the map and the fusion are:
``calibration``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from tqdm.auto import tqdm

from ..core.errors import XBTError
from .calibration import CANDIDATE_DEPTH, ScoreCalibration, part_lse

#: fusion weights of a backfilled item's old-space score tried per fraction (0: its new score alone)
FUSE_WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)


def calibration_set(
    vectors: dict[str, np.ndarray], image_ids: np.ndarray, modality: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``fit_calibration``'s ``(new_q, adapted_q, new_g, old_g, target)`` from image-caption pair rows,
    shaped like a gallery of ``modality`` ("image" or "text").

    ``vectors``: float32 [n_rows, d] per row under ``new_img``, ``ad_img``, ``old_img``, ``new_txt``,
    ``ad_txt``, ``old_txt``; ``image_ids``: int [n_rows], rows with the same image share an id
    (``fusion.image_ids``). A gallery holds each image once, so the image side keeps one row per
    distinct image, and a caption answers the image it was written for (as in the evaluation): in
    an image gallery every caption row is a query and each image one item; in a caption gallery
    each image is one query and every caption row an item. With COCO's layout (one row per caption,
    five per image) an image query then has five right captions, as in the caption gallery the map
    is fitted for; pairs with one caption per image would fit it to a search with one right answer.
    """
    if modality not in ("image", "text"):
        raise XBTError(f"modality is 'image' or 'text' (what the gallery holds), got {modality!r}")
    image_ids = np.asarray(image_ids)
    if image_ids.shape != (len(vectors["new_txt"]),):
        raise XBTError(f"image_ids needs one id per pair row ({len(vectors['new_txt'])}), got shape {image_ids.shape}")
    ids, first = np.unique(image_ids, return_index=True)
    img = {k: np.asarray(vectors[f"{k}_img"])[first] for k in ("new", "ad", "old")}
    txt = {k: np.asarray(vectors[f"{k}_txt"]) for k in ("new", "ad", "old")}
    if modality == "image":
        return txt["new"], txt["ad"], img["new"], img["old"], image_ids[:, None] == ids[None, :]
    return img["new"], img["ad"], txt["new"], txt["old"], ids[:, None] == image_ids[None, :]


def fit_temperature(scores: np.ndarray, target: np.ndarray) -> float:
    """The softmax temperature under which the pairs' right items are likeliest (a grid, 0.003-0.5).

    ``scores`` float [n_q, n_g], ``target`` bool [n_q, n_g]; a query with several right items counts
    their summed probability.
    """
    s = np.asarray(scores, np.float64)
    grid = np.exp(np.linspace(np.log(0.003), np.log(0.5), 60))

    def loglik(t: float) -> float:
        return float((part_lse(np.where(target, s, -np.inf), t, s.shape[1]) - part_lse(s, t, s.shape[1])).mean())

    return float(max(grid, key=loglik))


def _first_rank(merged: np.ndarray, hit: np.ndarray, miss: int) -> np.ndarray:
    """0-based merged rank of each row's best right candidate (ties against it); ``miss`` where none is there."""
    best = np.where(hit, merged, -np.inf).max(1, keepdims=True)
    return np.where(hit.any(1), (merged > best).sum(1), miss)


def fit_calibration(
    new_q: np.ndarray,
    adapted_q: np.ndarray,
    new_g: np.ndarray,
    old_g: np.ndarray,
    target: np.ndarray,
    fractions: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75),
    seed: int = 0,
    per_query: bool = False,
    order: np.ndarray | None = None,
    mixes: int = 6,
    norms: tuple[float, ...] = (0.0, 0.25, 0.5, 0.625, 0.75, 0.875, 1.0),
    fuse_weights: tuple[float, ...] = FUSE_WEIGHTS,
    verbose: bool = False,
) -> ScoreCalibration:
    """The maps, one per backfilled fraction, that merge best on held-out pairs.

    Args:
        new_q: float32 [n_q, d_new] bare new-model queries; adapted_q [n_q, d_old] the adapter's.
        new_g, old_g: float32 [n_g, d_new] / [n_g, d_old] the same gallery items in both spaces.
        target: bool [n_q, n_g], True where the gallery item answers the query.
        fractions: backfilled shares to fit a map at (``mixes`` random masks each).
        order: a backfill order of the gallery items (``planner.plan_order`` on their old
            vectors): each fraction's mix is its prefix instead of random masks, so the maps fit
            the mixes that order makes (a planned backfill is not a random sample).
        norms: the per-query normalisation weights tried (``ScoreCalibration``).
        fuse_weights: the weights of a backfilled item's old-space score tried once each fraction's map is
            chosen (``ScoreCalibration.fuse``; ``(0.0,)``: no fusion).
        verbose: a progress bar over the fractions.

    Returns:
        ``ScoreCalibration`` with one point and one fusion weight per fraction, and one more fusion weight at 100 %
        (every item re-embedded, before cutover; on the last map, 0 unless fusing beats the new model alone on the
        pairs at R@1 and R@10): the (scale, shift, norm) whose merged
        Recall@1 and Recall@10 on the mixes stay furthest above the straight line between the
        pairs' own new->old and new->new (the worst of the two, ties by their mean), searched
        coarse to fine around matching the spread and mean of both spaces' scores. The global
        ``scale``/``shift`` is that starting map.
    """
    s_new = np.asarray(new_q, np.float32) @ np.asarray(new_g, np.float32).T
    s_old = np.asarray(adapted_q, np.float32) @ np.asarray(old_g, np.float32).T
    target = np.asarray(target, bool)
    if target.shape != s_new.shape or not target.any(1).all():
        raise XBTError(f"target must be bool [n_queries, n_gallery] = {s_new.shape} with a match in every row")
    if not fractions or not all(0 < f < 1 for f in fractions):
        raise XBTError(f"fractions must be backfilled shares strictly between 0 and 1, got {fractions!r}")
    n_g = s_new.shape[1]
    depth = min(CANDIDATE_DEPTH, n_g)
    cal = ScoreCalibration(
        temperature_new=fit_temperature(s_new, target),
        temperature_old=fit_temperature(s_old, target),
        depth=depth,
        per_query=per_query,
    )
    ends = {k: [float((_first_rank(s, target, n_g) < k).mean()) for s in (s_old, s_new)] for k in (1, 10)}
    in_new = np.repeat([False, True], depth)[
        None, :
    ]  # each mix's candidates: the old part's top-depth, then the new part's
    rng = np.random.default_rng(seed)
    start_scale = float(s_new.std() / max(s_old.std(), 1e-6))
    start_shift = float(s_new.mean() - start_scale * s_old.mean())
    points, fuse = [], []
    for f in tqdm([*sorted(fractions), 1.0], desc="fit score calibration", unit="fraction", disable=not verbose):
        if f == 1.0:  # every item re-embedded, before cutover: only the fusion weight is left to choose
            masks = [np.ones(n_g, bool)]
        elif order is None:
            masks = [rng.random(n_g) < f for _ in range(mixes)]
        else:
            masks = [np.zeros(n_g, bool)]
            masks[0][np.asarray(order)[: int(round(f * n_g))]] = True
        # per mix, each part's top-``depth`` candidates: a merged rank below ``depth`` only depends
        # on them, so every map is scored on [n_q, 2 * depth] arrays
        parts = []
        for mask in masks:
            cand = []
            for scores, member in ((s_old, ~mask), (s_new, mask)):
                masked = np.where(member[None, :], scores, -np.inf)
                top = np.argpartition(-masked, depth - 1, axis=1)[:, :depth]
                cand.append((np.take_along_axis(masked, top, 1), np.take_along_axis(target, top, 1), top))
            (o_s, o_t, _), (n_s, n_t, n_top) = cand
            both_s = np.concatenate([o_s, n_s], 1)
            o_of_n = np.where(np.isfinite(n_s), np.take_along_axis(s_old, n_top, 1), 0.0)  # backfilled: both spaces
            parts.append(
                (
                    o_s,
                    n_s,
                    np.concatenate([o_t, n_t], 1) & np.isfinite(both_s),
                    cal.query_shift(both_s, both_s, in_new),
                    o_of_n,
                )
            )
        lines = {k: ends[k][0] + f * (ends[k][1] - ends[k][0]) for k in ends}

        def score(scale: float, shift: float, norm: float, fuse: float = 0.0) -> tuple[float, float]:
            gaps = {k: 0.0 for k in lines}
            for o_s, n_s, hit, q_shift, o_of_n in parts:
                mapped = lambda x: scale * x + shift + norm * q_shift[:, None]  # noqa: E731
                fused = (1.0 - fuse) * n_s + fuse * mapped(o_of_n) if fuse else n_s
                ranks = _first_rank(np.concatenate([mapped(o_s), fused], 1), hit, 2 * depth)
                for k in gaps:
                    gaps[k] += (float((ranks < k).mean()) - lines[k]) / len(parts)
            return min(gaps.values()), sum(gaps.values()) / len(gaps)

        if f < 1.0:  # the map at this fraction (at 100 %: the last one's)
            best = None
            for norm in norms:
                cur = (*score(start_scale, start_shift, norm), start_scale, start_shift)
                log_step, shift_step = np.log(2.0) / 3, 0.05
                for _ in range(3):  # coarse to fine: a 7 x 13 grid around the best so far, each round 3x finer
                    sc0, sh0 = cur[2], cur[3]
                    for log_mult in np.linspace(-3, 3, 7) * log_step:
                        sc = sc0 * float(np.exp(log_mult))
                        centre = sh0 + (sc0 - sc) * float(s_old.mean())  # keep the bulk's mean where it was
                        for sh in centre + np.linspace(-6, 6, 13) * shift_step:
                            cand = (*score(sc, float(sh), norm), sc, float(sh))
                            if cand[:2] > cur[:2]:
                                cur = cand
                    log_step, shift_step = log_step / 3, shift_step / 3
                if best is None or cur[:2] > best[0][:2]:
                    best = (cur, norm)
            (_, _, sc, sh), norm = best
            points.append([f, sc, sh, norm])
        # then how much of a backfilled item's old-space score joins its new one (ties: the smaller weight)
        fuse.append([f, max(fuse_weights, key=lambda w: (*score(sc, sh, norm, w), -w))])
    return dataclasses.replace(
        cal,
        scale=start_scale,
        shift=start_shift,
        points=points,
        fuse=fuse,
        source=f"fitted on {s_new.shape[0]} queries x {n_g} items at fractions {list(sorted(fractions))}, "
        f"{1 if order is not None else mixes} {'planned' if order is not None else 'random'} mix(es) each; the "
        "fusion at 100 % too",
    )


def fit_gallery_calibration(gallery, adapter, vectors: dict, image_ids: np.ndarray, verbose: bool = False):
    """``fit_calibration`` for ``gallery``'s merge, from pair rows' vectors (``pair_vectors(adapter, old, pairs)``).

    The old part's queries are the adapter's, or the OLD model's own where ``gallery.old_queries`` is ``"old
    model"``; the map records which (``ScoreCalibration.fitted_for``), so that serving it with another adapter
    warns.
    """
    old_model = gallery.old_queries == "old model"
    if old_model:  # the calibration merges the queries the old part is searched with
        vectors = {**vectors, "ad_img": vectors["old_img"], "ad_txt": vectors["old_txt"]}
    cal = fit_calibration(*calibration_set(vectors, image_ids, gallery.modality), verbose=verbose)
    return dataclasses.replace(cal, fitted_for="old model" if old_model else adapter.adapter_id())

"""Score calibration: one scale for the scores of a gallery that is part old space, part new space.

During a backfill an adapter query (new model mapped into the old space) scores the items that
still hold OLD vectors, and the bare new query scores the re-embedded items in the NEW space. The
two cosines are not comparable (each space has its own spread and offset), so they are mapped onto
the new space's scale before merging:

- global (the default): ``s_old -> scale * s_old + shift``, one affine map fitted on
  image–caption pairs (``fit_calibration``): for random mixes of the pairs into old and new parts,
  the map that gives the merged search the best Recall@1 (then MRR@20) is kept.
- per query (``per_query=True``, an option): items scored in BOTH spaces (backfilled items keep
  their old vectors until cutover; the gallery hands a sample of them, the anchors) give each
  query its own affine map, matching the mean and spread of the anchors' old-space scores to their
  new-space scores; blended with the global map by anchor count. It needs no pairs, but it matches
  the bulk of the scores, not the top where rankings are decided: on the toy world it merges
  little better than raw cosines (BENCHMARKS.md), so it is off by default.

Both maps are increasing in ``s_old``, so the merged top-k is always inside the union of each
part's own top-k (a merged search never needs more than k results per part).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .errors import XBTError, need

MERGES = ("calibrated", "naive", "interleave")
_DEPTH = 20  # candidates per part when fitting: R@1 and MRR@20 are exact


@dataclass
class ScoreCalibration:
    """How old-space scores are put on the new space's scale.

    Attributes:
        scale, shift: the global affine map ``scale * s_old + shift`` (scale > 0).
        per_query: also use per-query anchor statistics (see module docstring).
        min_anchors: below this many anchors only the global map is used; the per-query map gets
            full weight from ``4 * min_anchors`` anchors on.
        source: how the global map was obtained (JSON, for the gallery's record).
    """

    scale: float = 1.0
    shift: float = 0.0
    per_query: bool = False
    min_anchors: int = 16
    source: str = "identity"

    def __post_init__(self) -> None:
        need(np.isfinite(self.scale) and self.scale > 0, f"calibration scale must be a positive number, got {self.scale!r}")
        need(np.isfinite(self.shift), f"calibration shift must be finite, got {self.shift!r}")
        need(isinstance(self.min_anchors, int) and self.min_anchors >= 2, f"min_anchors must be an int >= 2, got {self.min_anchors!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON form (``from_dict`` reads it back)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScoreCalibration:
        """Inverse of ``to_dict``; unknown keys are refused, naming the known ones."""
        known = set(cls.__dataclass_fields__)
        if not isinstance(d, dict) or set(d) - known:
            raise XBTError(f"a score calibration is a JSON object with keys {sorted(known)}, got {d!r}")
        return cls(**d)

    def old_to_new(self, old_scores: np.ndarray, anchor_old: np.ndarray | None = None,
                   anchor_new: np.ndarray | None = None) -> np.ndarray:
        """Old-space scores [n_queries, m] mapped to the new space's scale (float32, same shape).

        ``anchor_old`` / ``anchor_new``: [n_queries, n_anchors] scores of the same anchor items in
        the old space (adapter query) and the new space (bare new query), or ``None``.
        """
        s = np.asarray(old_scores, dtype=np.float32)
        glob = self.scale * s + self.shift
        n_anchors = 0 if anchor_old is None else anchor_old.shape[1]
        if not self.per_query or n_anchors < self.min_anchors:
            return glob.astype(np.float32)
        mu_o, sd_o = anchor_old.mean(1, keepdims=True), anchor_old.std(1, keepdims=True)
        mu_n, sd_n = anchor_new.mean(1, keepdims=True), anchor_new.std(1, keepdims=True)
        local = mu_n + (s - mu_o) * (sd_n / np.maximum(sd_o, 1e-6))
        weight = min(1.0, (n_anchors - self.min_anchors) / (3.0 * self.min_anchors) + 0.25)
        return (weight * local + (1.0 - weight) * glob).astype(np.float32)


def merge_scores(old_scores: np.ndarray, new_scores: np.ndarray, in_new: np.ndarray, merge: str,
                 calibration: ScoreCalibration | None = None, anchor_old: np.ndarray | None = None,
                 anchor_new: np.ndarray | None = None, n_old: int | None = None, n_new: int | None = None) -> np.ndarray:
    """One merged score per candidate: float32 [n_queries, m] (higher is better).

    ``old_scores`` / ``new_scores`` [n_queries, m] hold each candidate's score in its own space
    (the other entry is ignored); ``in_new`` bool [n_queries, m] says which applies.

    - ``"naive"``: the raw cosines side by side.
    - ``"calibrated"``: old scores mapped by ``calibration.old_to_new`` (anchors as there).
    - ``"interleave"``: rank interleaving: a candidate's score is minus its rank in its own part
      divided by that part's size (``n_old`` / ``n_new``), so the parts alternate in proportion to
      their sizes (strict alternation at a 50 % backfill). Candidates must be given in each part's
      rank order (descending score).
    """
    if merge not in MERGES:
        raise XBTError(f"unknown merge {merge!r}; use one of {list(MERGES)}")
    if merge == "naive":
        return np.where(in_new, new_scores, old_scores).astype(np.float32)
    if merge == "calibrated":
        mapped = (calibration or ScoreCalibration()).old_to_new(old_scores, anchor_old, anchor_new)
        return np.where(in_new, new_scores, mapped).astype(np.float32)
    rank_new = np.cumsum(in_new, axis=1) - 1
    rank_old = np.cumsum(~in_new, axis=1) - 1
    pos = np.where(in_new, (rank_new + 0.5) / max(n_new or 1, 1), (rank_old + 0.5) / max(n_old or 1, 1))
    return (-pos).astype(np.float32)


def _first_hit_ranks(merged: np.ndarray, target: np.ndarray) -> np.ndarray:
    """0-based rank of each query's best target item (ties count against it): int [n_queries]."""
    best = np.where(target, merged, -np.inf).max(1, keepdims=True)
    return (merged > best).sum(1)


def fit_calibration(new_q: np.ndarray, adapted_q: np.ndarray, new_g: np.ndarray, old_g: np.ndarray,
                    target: np.ndarray, fractions: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75), seed: int = 0,
                    per_query: bool = False, order: np.ndarray | None = None) -> ScoreCalibration:
    """The global affine map that merges best on held-out pairs.

    Args:
        new_q: float32 [n_q, d_new] bare new-model queries; adapted_q [n_q, d_old] the adapter's.
        new_g, old_g: float32 [n_g, d_new] / [n_g, d_old] the same gallery items in both spaces.
        target: bool [n_q, n_g], True where the gallery item answers the query.
        fractions: backfilled shares to simulate (a random mask each).
        order: a backfill order of the gallery items (``planner.plan_order`` on their old
            vectors): the simulated mixes are its prefixes instead of random masks, so the map
            fits the mixes that order makes (a planned backfill is not a random sample).

    Returns:
        ``ScoreCalibration`` with the (scale, shift) of the best mean R@1 (ties: MRR) over the
        simulated mixes, starting from matching the spread and mean of both spaces' score
        distributions and searching scale and shift around it.
    """
    s_new = np.asarray(new_q, np.float32) @ np.asarray(new_g, np.float32).T
    s_old = np.asarray(adapted_q, np.float32) @ np.asarray(old_g, np.float32).T
    target = np.asarray(target, bool)
    if target.shape != s_new.shape or not target.any(1).all():
        raise XBTError(f"target must be bool [n_queries, n_gallery] = {s_new.shape} with a match in every row")
    rng = np.random.default_rng(seed)
    # per simulated mix, each part's top-``depth`` candidates: a merged rank below ``depth`` only
    # depends on them, so every (scale, shift) is scored on [n_q, 2 * depth] arrays
    depth = min(_DEPTH, s_new.shape[1])
    parts = []
    for f in fractions:
        if order is None:
            mask = rng.random(s_new.shape[1]) < f
        else:
            mask = np.zeros(s_new.shape[1], bool)
            mask[np.asarray(order)[: int(round(f * len(mask)))]] = True
        cand = []
        for scores, member in ((s_old, ~mask), (s_new, mask)):
            masked = np.where(member[None, :], scores, -np.inf)
            top = np.argpartition(-masked, depth - 1, axis=1)[:, :depth]
            cand.append((np.take_along_axis(masked, top, 1), np.take_along_axis(target, top, 1)))
        parts.append(cand)

    def score(scale: float, shift: float) -> tuple[float, float]:
        r1 = mrr = 0.0
        for (o_s, o_t), (n_s, n_t) in parts:
            merged = np.concatenate([scale * o_s + shift, n_s], 1)
            hit = np.concatenate([o_t, n_t], 1) & np.isfinite(merged)
            best = np.where(hit, merged, -np.inf).max(1, keepdims=True)
            ranks = np.where(hit.any(1), (merged > best).sum(1), 2 * depth)
            r1, mrr = r1 + float((ranks == 0).mean()), mrr + float(np.where(ranks < depth, 1.0 / (ranks + 1), 0.0).mean())
        return r1, mrr

    scale = float(s_new.std() / max(s_old.std(), 1e-6))
    shift = float(s_new.mean() - scale * s_old.mean())
    log_step, shift_step = np.log(2.0) / 3, 0.05
    best = (*score(scale, shift), scale, shift)
    for _ in range(3):  # coarse to fine: a 7 x 13 grid around the best so far, each round 3x finer
        for log_mult in np.linspace(-3, 3, 7) * log_step:
            sc = best[2] * float(np.exp(log_mult))
            centre = best[3] + (best[2] - sc) * float(s_old.mean())  # keep the bulk's mean where it was
            for sh in centre + np.linspace(-6, 6, 13) * shift_step:
                cand = (*score(sc, float(sh)), sc, float(sh))
                if cand[:2] > best[:2]:
                    best = cand
        log_step, shift_step = log_step / 3, shift_step / 3
    return ScoreCalibration(scale=best[2], shift=best[3], per_query=per_query,
                            source=f"fitted on {s_new.shape[0]} queries x {s_new.shape[1]} items, fractions {list(fractions)}")

"""Score calibration: one scale for the scores of a gallery that is part old space, part new space.

During a backfill an adapter query (new model mapped into the old space) scores the items that
still hold OLD vectors, and the bare new query scores the re-embedded items in the NEW space. The
two cosines are not comparable (each space has its own spread and offset, and the adapter's
top scores are less sure than the new model's), so old-space scores are mapped onto the new
space's scale before merging:

    s_old -> scale * s_old + shift + norm * T_new * (LSE_new(q) - LSE_old(q))

- ``scale``, ``shift``: an affine map, one per backfilled fraction in ``points`` (interpolated on
  the gallery's current fraction: the right map at 10 % backfilled, where most answers are old, is
  not the right one at 75 %), or the global ``scale``/``shift`` when ``points`` is empty.
- ``norm``: how much of a per-query normalisation to add. ``LSE_space(q)`` is the log-sum-exp of
  the query's top-``depth`` scores in that part divided by the space's temperature, so with
  ``norm = 1`` each part's scores become the log-probability of a softmax over that part (CLIP's
  own loss): a query whose new part holds one clear winner pushes the old part down, one whose new
  part is flat lets it in. ``norm = 0`` is the plain affine map.
- ``fit_calibration`` chooses these on image–caption pairs (never the gallery's own queries), laid
  out by ``calibration_set`` as the gallery's search is: for random mixes of the pairs at each
  fraction, the map whose merged search stays furthest above the straight line between not
  backfilling (the adapter's search) and a full backfill (the new model's), at Recall@1 and
  Recall@10 alike.
- per query from anchors (``per_query=True``, an option): items scored in BOTH spaces (backfilled
  items keep their old vectors until cutover; the gallery hands a sample of them, the anchors)
  give each query its own affine map, matching the mean and spread of the anchors' old-space
  scores to their new-space scores; blended with the map above by anchor count. It matches the
  bulk of the scores, not the top where rankings are decided, so it is off by default.

Every map is increasing in ``s_old`` for a given query, so the merged top-k is always inside the
union of each part's own top-k: a merged search needs ``max(k, depth)`` results per part.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..core.errors import XBTError, need

MERGES = ("calibrated", "naive", "interleave")
_DEPTH = 20  # candidates per part when fitting: R@1 and MRR@20 are exact


@dataclass
class ScoreCalibration:
    """How old-space scores are put on the new space's scale.

    Attributes:
        scale, shift: the global affine map ``scale * s_old + shift`` (scale > 0), used when
            ``points`` is empty.
        points: ``[[fraction, scale, shift, norm], ...]`` in increasing fraction: the map at each
            backfilled fraction (linear in between, the nearest outside); ``norm`` in [0, 1].
        temperature_new, temperature_old: each space's softmax temperature for the per-query
            normalisation (fitted on the pairs by likelihood).
        depth: top scores per part in each query's log-sum-exp (the gallery fetches that many).
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
    points: list = field(default_factory=list)
    temperature_new: float = 1.0
    temperature_old: float = 1.0
    depth: int = _DEPTH

    def __post_init__(self) -> None:
        need(
            np.isfinite(self.scale) and self.scale > 0,
            f"calibration scale must be a positive number, got {self.scale!r}",
        )
        need(np.isfinite(self.shift), f"calibration shift must be finite, got {self.shift!r}")
        need(
            isinstance(self.min_anchors, int) and self.min_anchors >= 2,
            f"min_anchors must be an int >= 2, got {self.min_anchors!r}",
        )
        need(
            self.temperature_new > 0 and self.temperature_old > 0,
            f"temperatures must be positive, got {self.temperature_new!r} / {self.temperature_old!r}",
        )
        need(isinstance(self.depth, int) and self.depth >= 1, f"depth must be an int >= 1, got {self.depth!r}")
        self.points = [[float(x) for x in p] for p in self.points]
        for p in self.points:
            need(
                len(p) == 4 and 0 <= p[0] <= 1 and p[1] > 0 and np.isfinite(p[2]) and 0 <= p[3] <= 1,
                f"each calibration point is [fraction in [0, 1], scale > 0, shift, norm in [0, 1]], got {p!r}",
            )
        need(
            [p[0] for p in self.points] == sorted({p[0] for p in self.points}),
            "calibration points must have distinct fractions in increasing order",
        )

    def summary(self) -> str:
        """One line for logs: the map at each fitted fraction, or the global one."""
        if not self.points:
            return f"scale {self.scale:.3f}, shift {self.shift:+.3f}"
        return "; ".join(f"{f:.0%}: scale {sc:.3f} shift {sh:+.3f} norm {n:.2f}" for f, sc, sh, n in self.points)

    def at(self, fraction: float | None) -> tuple[float, float, float]:
        """``(scale, shift, norm)`` at a backfilled ``fraction`` (None: the global map, no normalisation)."""
        if not self.points or fraction is None:
            return self.scale, self.shift, 0.0
        fs = [p[0] for p in self.points]
        return tuple(float(np.interp(fraction, fs, [p[i] for p in self.points])) for i in (1, 2, 3))

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

    def old_to_new(
        self,
        old_scores: np.ndarray,
        fraction: float | None = None,
        query_shift: np.ndarray | None = None,
        anchor_old: np.ndarray | None = None,
        anchor_new: np.ndarray | None = None,
    ) -> np.ndarray:
        """Old-space scores [n_queries, m] mapped to the new space's scale (float32, same shape).

        ``fraction``: the gallery's backfilled share (picks the map from ``points``).
        ``query_shift``: [n_queries] ``T_new * (LSE_new - LSE_old)`` per query (``part_lse``), or
        ``None`` (no per-query normalisation). ``anchor_old`` / ``anchor_new``: [n_queries,
        n_anchors] scores of the same anchor items in the old space (adapter query) and the new
        space (bare new query), or ``None``.
        """
        s = np.asarray(old_scores, dtype=np.float32)
        scale, shift, norm = self.at(fraction)
        glob = scale * s + shift
        if norm and query_shift is not None:
            glob = glob + norm * np.nan_to_num(query_shift, posinf=0.0, neginf=0.0)[:, None]
        n_anchors = 0 if anchor_old is None else anchor_old.shape[1]
        if not self.per_query or n_anchors < self.min_anchors:
            return glob.astype(np.float32)
        mu_o, sd_o = anchor_old.mean(1, keepdims=True), anchor_old.std(1, keepdims=True)
        mu_n, sd_n = anchor_new.mean(1, keepdims=True), anchor_new.std(1, keepdims=True)
        local = mu_n + (s - mu_o) * (sd_n / np.maximum(sd_o, 1e-6))
        weight = min(1.0, (n_anchors - self.min_anchors) / (3.0 * self.min_anchors) + 0.25)
        return (weight * local + (1.0 - weight) * glob).astype(np.float32)

    def query_shift(self, old_scores: np.ndarray, new_scores: np.ndarray, in_new: np.ndarray) -> np.ndarray:
        """``T_new * (LSE_new(q) - LSE_old(q))`` over each part's top-``depth`` candidates: float64 [n_queries].

        A query with no candidate in one part gets 0 (there is nothing to merge it with).
        """
        lse_new = part_lse(np.where(in_new, new_scores, -np.inf), self.temperature_new, self.depth)
        lse_old = part_lse(np.where(in_new, -np.inf, old_scores), self.temperature_old, self.depth)
        out = self.temperature_new * (lse_new - lse_old)
        return np.where(np.isfinite(out), out, 0.0)


def part_lse(scores: np.ndarray, temperature: float, depth: int) -> np.ndarray:
    """Log-sum-exp of each row's top-``depth`` finite ``scores / temperature``: float64 [n_rows] (-inf if none)."""
    z = np.asarray(scores, np.float64) / temperature
    if z.shape[1] > depth:
        z = -np.partition(-z, depth - 1, axis=1)[:, :depth]
    top = z.max(1, keepdims=True) if z.shape[1] else np.full((len(z), 1), -np.inf)
    safe = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return (safe + np.log(np.exp(z - safe).sum(1, keepdims=True)))[:, 0]


def merge_scores(
    old_scores: np.ndarray,
    new_scores: np.ndarray,
    in_new: np.ndarray,
    merge: str,
    calibration: ScoreCalibration | None = None,
    anchor_old: np.ndarray | None = None,
    anchor_new: np.ndarray | None = None,
    n_old: int | None = None,
    n_new: int | None = None,
) -> np.ndarray:
    """One merged score per candidate: float32 [n_queries, m] (higher is better).

    ``old_scores`` / ``new_scores`` [n_queries, m] hold each candidate's score in its own space
    (the other entry is ignored); ``in_new`` bool [n_queries, m] says which applies; ``n_old`` /
    ``n_new`` are the parts' sizes in the gallery (their ratio picks the calibrated map).

    - ``"naive"``: the raw cosines side by side.
    - ``"calibrated"``: old scores mapped by ``calibration.old_to_new`` at the gallery's backfilled
      fraction (anchors as there). Candidates must hold each part's top ``max(k, depth)``.
    - ``"interleave"``: rank interleaving: a candidate's score is minus its rank in its own part
      divided by that part's size, so the parts alternate in proportion to their sizes (strict
      alternation at a 50 % backfill). Candidates must be given in each part's rank order.
    """
    if merge not in MERGES:
        raise XBTError(f"unknown merge {merge!r}; use one of {list(MERGES)}")
    if merge == "naive":
        return np.where(in_new, new_scores, old_scores).astype(np.float32)
    if merge == "calibrated":
        cal = calibration or ScoreCalibration()
        fraction = n_new / (n_old + n_new) if n_old is not None and n_new is not None and n_old + n_new else None
        shift = cal.query_shift(old_scores, new_scores, in_new) if cal.at(fraction)[2] else None
        mapped = cal.old_to_new(old_scores, fraction, shift, anchor_old, anchor_new)
        return np.where(in_new, new_scores, mapped).astype(np.float32)
    rank_new = np.cumsum(in_new, axis=1) - 1
    rank_old = np.cumsum(~in_new, axis=1) - 1
    pos = np.where(in_new, (rank_new + 0.5) / max(n_new or 1, 1), (rank_old + 0.5) / max(n_old or 1, 1))
    return (-pos).astype(np.float32)


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
        verbose: a progress bar over the fractions.

    Returns:
        ``ScoreCalibration`` with one point per fraction: the (scale, shift, norm) whose merged
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
    depth = min(_DEPTH, n_g)
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
    points = []
    for f in tqdm(sorted(fractions), desc="fit score calibration", unit="fraction", disable=not verbose):
        if order is None:
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
                cand.append((np.take_along_axis(masked, top, 1), np.take_along_axis(target, top, 1)))
            (o_s, o_t), (n_s, n_t) = cand
            both_s = np.concatenate([o_s, n_s], 1)
            parts.append(
                (
                    o_s,
                    n_s,
                    np.concatenate([o_t, n_t], 1) & np.isfinite(both_s),
                    cal.query_shift(both_s, both_s, in_new),
                )
            )
        lines = {k: ends[k][0] + f * (ends[k][1] - ends[k][0]) for k in ends}

        def score(scale: float, shift: float, norm: float) -> tuple[float, float]:
            gaps = {k: 0.0 for k in lines}
            for o_s, n_s, hit, q_shift in parts:
                ranks = _first_rank(
                    np.concatenate([scale * o_s + shift + norm * q_shift[:, None], n_s], 1), hit, 2 * depth
                )
                for k in gaps:
                    gaps[k] += (float((ranks < k).mean()) - lines[k]) / len(parts)
            return min(gaps.values()), sum(gaps.values()) / len(gaps)

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
    return dataclasses.replace(
        cal,
        scale=start_scale,
        shift=start_shift,
        points=points,
        source=f"fitted on {s_new.shape[0]} queries x {n_g} items at fractions {list(sorted(fractions))}, "
        f"{len(masks)} {'planned' if order is not None else 'random'} mix(es) each",
    )

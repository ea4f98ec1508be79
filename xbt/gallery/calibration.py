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
- ``fuse``: until cutover a backfilled item keeps its OLD vector, so it can be scored in both spaces:
  ``(1 - w) * s_new + w * map(s_old)``, with ``w`` per backfilled fraction (0: its new score alone). The two
  searches differ in what they get wrong, so the sum ranks better than either (on shapes' image queries
  the merged curve lies above the straight line only with it: BENCHMARKS.md). That holds at 100 % too, with
  every item re-embedded but the old vectors still kept (a weight fitted there; a map saved before it had one
  does not fuse at 100 %). After ``cutover`` the old vectors are gone and every item is searched with the new
  query alone.
- ``calibration_fit.fit_calibration`` chooses these on image–caption pairs (never the gallery's own queries),
  laid out by ``calibration_fit.calibration_set`` as the gallery's search is: for random mixes of the pairs at
  each fraction, the map and fusion weight whose merged search stays furthest above the straight line between
  not backfilling (the adapter's search) and a full backfill (the new model's), at Recall@1 and Recall@10 alike.
- per query from anchors (``per_query=True``, an option): items scored in BOTH spaces (backfilled
  items keep their old vectors until cutover; the gallery hands a sample of them, the anchors)
  give each query its own affine map, matching the mean and spread of the anchors' old-space
  scores to their new-space scores; blended with the map above by anchor count. It matches the
  bulk of the scores, not the top where rankings are decided, so it is off by default.

Every map is increasing in ``s_old`` for a given query, so the merged top-k is always inside the
union of each part's own top-k: a merged search needs ``max(k, depth)`` results per part.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..core.errors import XBTError, need

MERGES = ("calibrated", "naive", "interleave")
CANDIDATE_DEPTH = 20  # candidates per part when fitting: R@1 and MRR@20 are exact


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
        fuse: ``[[fraction, w], ...]`` in increasing fraction: the weight of a backfilled item's mapped old-space
            score beside its new one (linear in between; empty, as in files saved before it: 0).
        per_query: also use per-query anchor statistics (see module docstring).
        min_anchors: below this many anchors only the global map is used; the per-query map gets
            full weight from ``4 * min_anchors`` anchors on.
        source: how the global map was obtained (JSON, for the gallery's record).
        fitted_for: whose queries the map was fitted for: an adapter's ``adapter_id()``, or ``"old model"`` where
            the old part is searched with the old model's own queries (None: not recorded, as in files saved
            before it). A map merges one query path's scores; another path (a refreshed head) is warned about.
    """

    scale: float = 1.0
    shift: float = 0.0
    per_query: bool = False
    min_anchors: int = 16
    source: str = "identity"
    points: list = field(default_factory=list)
    temperature_new: float = 1.0
    temperature_old: float = 1.0
    depth: int = CANDIDATE_DEPTH
    fuse: list = field(default_factory=list)
    fitted_for: str | None = None

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
        self.fuse = [[float(x) for x in p] for p in self.fuse]
        for rows, what in ((self.points, "points"), (self.fuse, "fuse weights")):
            need(
                [p[0] for p in rows] == sorted({p[0] for p in rows}),
                f"calibration {what} must have distinct fractions in increasing order",
            )
        for p in self.fuse:
            need(
                len(p) == 2 and 0 <= p[0] <= 1 and 0 <= p[1] <= 1,
                f"each fuse weight is [fraction in [0, 1], weight in [0, 1]], got {p!r}",
            )

    def summary(self) -> str:
        """One line for logs: the map at each fitted fraction, or the global one."""
        if not self.points:
            return f"scale {self.scale:.3f}, shift {self.shift:+.3f}"
        fuse = dict(self.fuse)
        return "; ".join(
            [
                f"{f:.0%}: scale {sc:.3f} shift {sh:+.3f} norm {n:.2f}" + (f" fuse {fuse[f]:.2f}" if f in fuse else "")
                for f, sc, sh, n in self.points
            ]
            + ([f"100% (before cutover): fuse {fuse[1.0]:.2f}"] if 1.0 in fuse else [])
        )

    def at(self, fraction: float | None) -> tuple[float, float, float]:
        """``(scale, shift, norm)`` at a backfilled ``fraction`` (None: the global map, no normalisation)."""
        if not self.points or fraction is None:
            return self.scale, self.shift, 0.0
        fs = [p[0] for p in self.points]
        return tuple(float(np.interp(fraction, fs, [p[i] for p in self.points])) for i in (1, 2, 3))

    def fuse_at(self, fraction: float | None) -> float:
        """The weight of a backfilled item's mapped old-space score at a backfilled ``fraction`` (0 without one)."""
        if not self.fuse or fraction is None or (fraction >= 1.0 and self.fuse[-1][0] < 1.0):
            return 0.0  # a map without a weight at 100 % (fitted before it had one) does not fuse there
        return float(np.interp(fraction, [p[0] for p in self.fuse], [p[1] for p in self.fuse]))

    def warn_if_fitted_for_other(self, adapter_id: str) -> None:
        """Warn where the map was fitted for another adapter's queries than those of ``adapter_id``."""
        if self.fitted_for not in (None, "old model", adapter_id):
            warnings.warn(
                f"the score calibration was fitted for the queries of adapter {self.fitted_for}, not of this one "
                f"({adapter_id}, e.g. a refreshed head): the two parts may merge off balance. Fit it for this "
                "adapter: xbt gallery build again with --adapter and --pairs (a backfill in progress is kept), or "
                "gallery.calibration = fit_gallery_calibration(gallery, adapter, *pair_vectors(adapter, old, pairs))",
                stacklevel=3,
            )

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
    old_of_new: np.ndarray | None = None,
) -> np.ndarray:
    """One merged score per candidate: float32 [n_queries, m] (higher is better).

    ``old_scores`` / ``new_scores`` [n_queries, m] hold each candidate's score in its own space
    (the other entry is ignored); ``in_new`` bool [n_queries, m] says which applies; ``n_old`` /
    ``n_new`` are the parts' sizes in the gallery (their ratio picks the calibrated map).

    - ``"naive"``: the raw cosines side by side.
    - ``"calibrated"``: old scores mapped by ``calibration.old_to_new`` at the gallery's backfilled
      fraction (anchors as there). Candidates must hold each part's top ``max(k, depth)``. ``old_of_new``
      [n_queries, m]: where ``in_new``, the candidate's OLD-space score (kept until cutover), fused with its new
      score by ``calibration.fuse_at`` (module docstring); ``None``: no fusion.
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
        w = cal.fuse_at(fraction) if old_of_new is not None else 0.0
        if w:
            fused = cal.old_to_new(np.where(in_new, old_of_new, 0.0), fraction, shift, anchor_old, anchor_new)
            new_scores = (1.0 - w) * np.asarray(new_scores, np.float32) + w * fused
        return np.where(in_new, new_scores, mapped).astype(np.float32)
    rank_new = np.cumsum(in_new, axis=1) - 1
    rank_old = np.cumsum(~in_new, axis=1) - 1
    pos = np.where(in_new, (rank_new + 0.5) / max(n_new or 1, 1), (rank_old + 0.5) / max(n_old or 1, 1))
    return (-pos).astype(np.float32)

"""Held-out measures that mirror the two searches an upgrade serves, for stage 2's per-path guard.

Stage 2 trains two query paths, and each must prove itself on pairs it never trained on before it
replaces stage 1's:

- text queries (T2I): held-out pair captions, encoded by the text path, search the OLD vectors of
  the held-out pair images (``t2i_ranks``);
- image queries (I2T): held-out pair images, encoded by the image path, search the OLD vectors of
  the held-out pair captions among distractor captions that no path trained on (``i2t_ranks``).

Galleries hold held-out items only: an item a path was trained on would be easier to reach than a
new one, and the measure would favour whichever path trained on it.

The score of a path is the geometric-mean rank of the right item (``geometric_mean_rank``, lower is
better), optionally weighted per query. Every rank counts, in proportion to its logarithm, so it
moves with small real changes that Recall@1 on a few hundred queries hides in noise, and it still
rewards the top ranks most. Inputs are float32 unit rows; ranks are 1-based, and a tie counts half
(the mid-rank), so a collapsed head that scores every item the same is ranked in the middle, not
first.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from statistics import NormalDist

import torch

from ..core.errors import XBTError


def target_ranks(
    queries: torch.Tensor, gallery: torch.Tensor, targets: torch.Tensor, chunk: int = 1024
) -> torch.Tensor:
    """The 1-based mid-rank of gallery row ``targets[i]`` for query ``i`` by inner product: float64 [n].

    ``queries`` [n, d] and ``gallery`` [m, d] are unit rows of one space; rank = 1 + the number of
    gallery rows scoring strictly higher + half the number of other rows scoring the same. A query
    with a non-finite value (a diverged head) ranks last (``m``). Computed in blocks of ``chunk``
    queries (memory m x chunk).
    """
    if queries.shape[-1] != gallery.shape[-1]:
        raise XBTError(
            f"queries are {queries.shape[-1]}-d but the gallery is {gallery.shape[-1]}-d; embed both in the old space"
        )
    if len(queries) != len(targets):
        raise XBTError(f"{len(queries)} queries but {len(targets)} targets; give one gallery row per query")
    out = []
    for s in range(0, len(queries), chunk):
        scores = queries[s : s + chunk].float() @ gallery.float().T
        right = scores.gather(1, targets[s : s + chunk, None].to(scores.device))
        ties = (scores == right).sum(1) - 1
        ranks = 1 + (scores > right).sum(1).double() + 0.5 * ties.double()
        broken = ~torch.isfinite(scores).all(1)
        out.append(torch.where(broken, torch.full_like(ranks, float(len(gallery))), ranks))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def geometric_mean_rank(ranks: torch.Tensor, weights: torch.Tensor | None = None) -> float:
    """``exp(weighted mean of log rank)``: 1.0 when every query ranks its item first; lower is better."""
    if len(ranks) == 0:
        raise XBTError("no held-out queries to score; keep some pairs for validation (val_fraction > 0)")
    logs = torch.log(ranks.double())
    if weights is None:
        return math.exp(float(logs.mean()))
    w = weights.double().to(logs.device)
    return math.exp(float((w * logs).sum() / w.sum()))


#: what the text path's guard reads
T2I_MEASURE = "T2I: held-out pair captions search the OLD vectors of the held-out pair images; geometric-mean rank"


def t2i_ranks(text_queries: torch.Tensor, old_images: torch.Tensor) -> torch.Tensor:
    """Ranks of held-out caption ``i`` [n, d_old] searching the old vectors of held-out images [n, d_old]: its own
    image is row ``i``."""
    return target_ranks(text_queries, old_images, torch.arange(len(text_queries)))


def i2t_ranks(image_queries: torch.Tensor, old_captions: torch.Tensor) -> torch.Tensor:
    """Ranks of held-out image ``i`` [n, d_old] searching old caption vectors [m >= n, d_old]: its caption is row
    ``i``, the rest are distractors."""
    if len(old_captions) < len(image_queries):
        raise XBTError(
            f"the caption gallery has {len(old_captions)} rows for {len(image_queries)} image queries; put each "
            "image's caption at its row"
        )
    return target_ranks(image_queries, old_captions, torch.arange(len(image_queries)))


def owned_ranks(queries: torch.Tensor, gallery: torch.Tensor, owner: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """The 1-based mid-rank of each query's best-placed own gallery row: float64 [n].

    ``queries`` [n, d] and ``gallery`` [m, d] are unit rows of one space; ``owner`` (int64 [m]) names the
    query each gallery row belongs to (-1: a distractor; every query owns at least one row). An image with
    five captions is found when any of them is; the rank counts the other queries' rows and distractors
    scoring strictly above its best own row, plus half of those scoring the same. A query with a non-finite
    score ranks last (``m``).
    """
    owner = owner.to(gallery.device)
    out = []
    for s in range(0, len(queries), chunk):
        scores = queries[s : s + chunk].float() @ gallery.float().T
        own = owner[None, :] == torch.arange(s, s + len(scores), device=scores.device)[:, None]
        if not own.any(1).all():
            raise XBTError("owned_ranks: a query owns no gallery row; give each query at least one of its items")
        best = scores.masked_fill(~own, float("-inf")).max(1, keepdim=True).values
        above = ((scores > best) & ~own).sum(1).double()
        ties = ((scores == best) & ~own).sum(1).double()
        ranks = 1 + above + 0.5 * ties
        broken = ~torch.isfinite(scores).all(1)
        out.append(torch.where(broken, torch.full_like(ranks, float(len(gallery))), ranks))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def paired_gain(
    base_log_ranks: torch.Tensor, log_ranks: torch.Tensor, weights: torch.Tensor | None = None
) -> tuple[float, float]:
    """Mean per-query log-rank gain of a state over a base on the same queries, and its standard error.

    ``base_log_ranks - log_ranks`` (float [n] each; > 0 where the state ranks the right item
    higher), averaged with optional per-query ``weights``. The standard error uses the weighted
    unbiased variance and the effective sample size ``(sum w)^2 / sum w^2`` (plain ``std / sqrt(n)``
    when unweighted). "A clear gain" in xbt means ``mean > standard error`` for one state, and more where
    the best of several states is taken (``clear_gain_bar``). Non-finite ranks (a diverged state) give
    ``(nan, nan)``, which is never a clear gain.
    """
    gain = base_log_ranks.double() - log_ranks.double()
    if not torch.isfinite(gain).all() or len(gain) < 2:
        return math.nan, math.nan
    w = torch.ones_like(gain) if weights is None else weights.double().to(gain.device)
    mean = float((w * gain).sum() / w.sum())
    n_eff = float(w.sum() ** 2 / (w**2).sum())
    variance = float((w * (gain - mean) ** 2).sum() / w.sum()) * n_eff / max(n_eff - 1.0, 1e-12)
    return mean, math.sqrt(variance / n_eff)


def clear_gain_bar(candidates: int) -> float:
    """How many standard errors the best of ``candidates`` states must gain by to count as a clear gain.

    One state: 1.0, the rule stage 2 uses. Where the best of several is kept, noise alone would pass one
    standard error far more often than one state does (16 %, one-sided), so the bar rises until the chance
    that any of them passes on noise alone is at most that (Bonferroni): 1.41 for 2, 1.94 for 6, 2.22 for 12.
    """
    if candidates < 1:
        raise XBTError(f"a clear gain needs at least one candidate state, got {candidates}")
    normal = NormalDist()
    return normal.inv_cdf(1.0 - (1.0 - normal.cdf(1.0)) / candidates)


def pick_and_confirm(base: torch.Tensor, candidates: list[torch.Tensor], seed: int = 0) -> dict:
    """Which of several candidate states beats a base on held-out queries, picked on one half, confirmed on the other.

    ``base`` and each of ``candidates``: float [n] log ranks of the same ``n`` queries' right items (``n >= 10``).
    A seeded permutation splits the queries in two halves. On the first, the best candidate (largest gain less
    the bar) must gain more than ``clear_gain_bar(len(candidates))`` standard errors in log rank
    (``paired_gain``) and put at least as many right items first as the base; the second half, which took no
    part in the choice, must confirm it with a gain of one standard error and as many right items first.
    Why: the best of several states is measured too well on the queries that picked it, so a rule that is
    applied again and again (a refresh at every backfill checkpoint) would keep noise about once in six
    tries with the bar alone, and about once in thirty with the confirmation (a real gain of 3.4 standard
    errors is then kept about 3 times in 5 rather than 19 in 20: the price).

    Returns ``{"chosen": index into candidates or None, "gain_and_se": [[g, se]] per candidate on the picking
    half, "clear_gain_bar", "confirm_gain_and_se": [g, se] of the picked one on the other half (nan where none
    was picked), "right_first": [picking half, confirming half] counts, the base first}``.
    """
    if len(base) < 10 or any(len(c) != len(base) for c in candidates):
        raise XBTError(f"pick_and_confirm needs at least 10 queries, the same for every state; got {len(base)}")
    halves = torch.randperm(len(base), generator=torch.Generator().manual_seed(seed))
    pick, check = halves[: len(halves) // 2], halves[len(halves) // 2 :]
    gains = [paired_gain(base[pick], c[pick]) for c in candidates]
    first = [[int((x[h] < math.log(1.5)).sum()) for x in (base, *candidates)] for h in (pick, check)]
    bar = clear_gain_bar(len(candidates))
    eligible = [i for i, (g, se) in enumerate(gains) if g > bar * se and first[0][i + 1] >= first[0][0]]
    best = max(eligible, key=lambda i: gains[i][0] - bar * gains[i][1], default=None)
    confirm = paired_gain(base[check], candidates[best][check]) if best is not None else (math.nan, math.nan)
    confirmed = best is not None and confirm[0] > confirm[1] and first[1][best + 1] >= first[1][0]
    return {
        "chosen": best if confirmed else None,
        "picked": best,
        "gain_and_se": [[round(g, 4), round(se, 4)] for g, se in gains],
        "clear_gain_bar": round(bar, 3),
        "confirm_gain_and_se": [round(x, 4) for x in confirm],
        "right_first": first,
    }


@dataclass
class PathChoice:
    """Which state one query path keeps, and why.

    Attributes:
        path: ``"text"`` or ``"image"``.
        measure: what the scores are (the search, the gallery, the statistic).
        scores: candidate label -> held-out score (lower is better); ``"stage 1"`` is always one.
        chosen: the kept candidate: the lowest score, ties to the earlier candidate (stage 1 first).
    """

    path: str
    measure: str
    scores: dict[str, float] = field(default_factory=dict)
    chosen: str = "stage 1"

    def add(self, label: str, score: float, eligible: bool = True) -> bool:
        """Record a candidate's score; True (and chosen) when it beats every earlier one strictly.

        ``eligible=False`` records the score without letting it be chosen (a gain too small to trust).
        """
        self.scores[label] = float(score)
        if eligible and score < self.scores[self.chosen]:
            self.chosen = label
            return True
        return False

    @property
    def kept_stage1(self) -> bool:
        """True when no stage-2 state beat stage 1 on the held-out pairs."""
        return self.chosen == "stage 1"

    def reason(self) -> str:
        """One sentence for the training record and the model card."""
        s1 = self.scores.get("stage 1")
        if self.kept_stage1:
            return f"kept stage 1: no stage-2 state beat its held-out score {s1:.3f} ({self.measure})"
        return (
            f"kept {self.chosen}: held-out score {self.scores[self.chosen]:.3f} vs stage 1's {s1:.3f} ({self.measure})"
        )

    def to_dict(self) -> dict:
        """JSON-ready record."""
        return {
            "path": self.path,
            "measure": self.measure,
            "scores": {k: round(v, 5) for k, v in self.scores.items()},
            "chosen": self.chosen,
            "reason": self.reason(),
        }


def versus_old_model(
    path: str, adapter_ranks: torch.Tensor, old_ranks: torch.Tensor, measure: str, weights: torch.Tensor | None = None
) -> dict:
    """Does a query path beat the OLD model's own queries on the held-out pairs? JSON-ready record.

    ``adapter_ranks`` / ``old_ranks``: float [n] ranks of the same held-out queries' right items,
    searched by the path and by the old model (``measure``), optionally weighted per query.
    Backward compatibility means the upgraded query finds old-gallery items at least as well as
    the old model did. The paired per-query log-rank gain says whether the difference is clear: a
    ``verdict`` of ``"worse"`` (the old model ahead by more than one standard error) is what
    ``say_versus_old`` warns about; a few hundred pairs often cannot tell, and the record says so.
    """
    mean, se = paired_gain(
        torch.log(old_ranks.double()), torch.log(adapter_ranks.double()), weights
    )  # > 0: the path ranks better
    verdict = "better" if mean > se else "worse" if mean < -se else "within noise"
    ours, theirs = geometric_mean_rank(adapter_ranks, weights), geometric_mean_rank(old_ranks, weights)
    return {
        "path": path,
        "measure": measure,
        "n": len(adapter_ranks),
        "adapter": round(ours, 5),
        "old_model": round(theirs, 5),
        "backward_compatible": bool(ours <= theirs),
        "verdict": verdict,
        "mean_log_rank_gain": round(mean, 5),
        "standard_error": round(se, 5),
        "summary": f"{path} queries: held-out geometric-mean rank {ours:.3f} vs the old model's {theirs:.3f} "
        f"({'within one standard error of' if verdict == 'within noise' else verdict + ' than'} the old model's "
        "queries).",
    }


def say_versus_old(record: dict, verbose: bool) -> None:
    """Print each path against the old model's queries; warn (even when quiet) where one is not backward compatible."""
    paths = [r for r in record.values() if isinstance(r, dict)]
    if verbose:
        for r in paths:
            print(f"xbt stage 2: {r['summary']}")
    worse = [r["path"] for r in paths if r["verdict"] == "worse"]
    if worse:
        warnings.warn(
            f"on the held-out pairs the adapter's {' and '.join(worse)} queries rank the old gallery worse than the "
            "old model's own queries, by more than one standard error: not backward compatible there "
            "(adapter.training['metrics']['stage2']['versus_old_model'] has the figures). Keep the old model for "
            "those queries (xbt.fit(..., method='slerp') fuses both), backfill the gallery, or fit with more pairs.",
            stacklevel=5,
        )  # the caller of xbt.fit

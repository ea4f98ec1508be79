"""Backfill planning: which gallery items to re-embed first, within a budget.

At planning time an un-backfilled item has only its OLD vector. The orders compared:

- ``"random"``: a seeded permutation (the baseline).
- ``"uncertainty"``: FastFill's idea: re-embed first where the old vector and the adapter's
  vector of the same item disagree most. That disagreement (``1 - cos(old, adapter(new))``) can
  only be measured on items embedded by both models (the image–caption pairs), so a
  ``DisagreementModel`` learns to predict it from the old vector alone (ridge regression on
  random Fourier features of the old vector, the role of FastFill's uncertainty head) and the
  gallery is ordered by the prediction.
- ``"density"``: items in crowded regions of the old space first (mean cosine to their 10 nearest
  gallery neighbours): that is where old vectors confuse items with each other.
- ``"spread"``: uncertainty within coverage: the old vectors are clustered (k-means, about 8
  items a cluster) and the clusters take turns, each giving its most uncertain item left. Nearby
  items (an image's captions, near-duplicates) are not all re-embedded before other regions get
  any.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.errors import XBTError
from ..evaluation.search import search

PLANS = ("random", "uncertainty", "density", "spread")


def budget_count(budget: float | int, n: int) -> int:
    """Items a budget covers: a float in [0, 1] is a fraction of ``n``, an int a count (at most ``n``)."""
    if isinstance(budget, bool) or not isinstance(budget, (int, float, np.integer, np.floating)):
        raise XBTError(f"budget must be a fraction in [0, 1] or an item count, got {budget!r}")
    if isinstance(budget, (float, np.floating)):
        if not 0.0 <= budget <= 1.0:
            raise XBTError(f"a fractional budget must lie in [0, 1], got {budget}; give an int for a count of items")
        return int(round(float(budget) * n))
    if budget < 0:
        raise XBTError(f"a budget count must be >= 0, got {budget}")
    return int(min(budget, n))


def disagreement(old: np.ndarray, adapted: np.ndarray) -> np.ndarray:
    """``1 - cos(old_i, adapted_i)`` per item: float32 [n] (rows are unit vectors)."""
    old, adapted = np.asarray(old, np.float32), np.asarray(adapted, np.float32)
    if old.shape != adapted.shape:
        raise XBTError(
            f"old vectors {old.shape} and adapter vectors {adapted.shape} must describe the same items in the old "
            "space"
        )
    return 1.0 - (old * adapted).sum(1)


@dataclass
class DisagreementModel:
    """Predicts the old/adapted disagreement of an item from its old vector: ridge on random Fourier features.

    Attributes:
        freqs: float32 [d_old, n_features] random frequencies; phases: float32 [n_features].
        weights: float32 [n_features + d_old + 1] ridge weights (features, the raw vector, a bias).
        holdout_spearman: rank correlation of prediction and truth on the held-out fifth of the fit data.
    """

    freqs: np.ndarray
    phases: np.ndarray
    weights: np.ndarray
    holdout_spearman: float = float("nan")

    def _features(self, old: np.ndarray) -> np.ndarray:
        old = np.asarray(old, np.float32)
        rff = np.sqrt(2.0 / self.freqs.shape[1]) * np.cos(old @ self.freqs + self.phases)
        return np.concatenate([rff, old, np.ones((len(old), 1), np.float32)], 1)

    def predict(self, old: np.ndarray) -> np.ndarray:
        """Predicted disagreement float32 [n] of items with old vectors [n, d_old]."""
        if np.asarray(old).shape[1] != self.freqs.shape[0]:
            raise XBTError(
                f"the model was fitted on {self.freqs.shape[0]}-d old vectors, got {np.asarray(old).shape[1]}-d"
            )
        return (self._features(old) @ self.weights).astype(np.float32)

    @classmethod
    def fit(
        cls, old: np.ndarray, adapted: np.ndarray, n_features: int = 512, ridge: float = 1e-2, seed: int = 0
    ) -> DisagreementModel:
        """Fit on items embedded by both models: old [n, d_old] and the adapter's vectors of them [n, d_old].

        Bandwidth: the median distance between old vectors. The ridge is relative to the feature
        scale. The last fifth (seeded shuffle) is held out for ``holdout_spearman``; the final
        weights are refitted on everything.
        """
        old = np.asarray(old, np.float32)
        y = disagreement(old, adapted)
        if len(old) < 20:
            raise XBTError(
                f"need at least 20 items embedded by both models to fit the disagreement model, got {len(old)}"
            )
        rng = np.random.default_rng(seed)
        sample = old[rng.choice(len(old), min(len(old), 500), replace=False)]
        dists = np.sqrt(np.maximum(2.0 - 2.0 * sample @ sample.T, 0.0))
        bandwidth = float(np.median(dists[np.triu_indices(len(sample), 1)])) or 1.0
        freqs = (rng.standard_normal((old.shape[1], n_features)) / bandwidth).astype(np.float32)
        phases = rng.uniform(0, 2 * np.pi, n_features).astype(np.float32)
        model = cls(freqs, phases, np.zeros(n_features + old.shape[1] + 1, np.float32))
        order = rng.permutation(len(old))
        split = int(len(old) * 0.8)
        model.weights = model._solve(old[order[:split]], y[order[:split]], ridge)
        pred = model.predict(old[order[split:]])
        model.holdout_spearman = _spearman(pred, y[order[split:]])
        model.weights = model._solve(old, y, ridge)
        return model

    def _solve(self, old: np.ndarray, y: np.ndarray, ridge: float) -> np.ndarray:
        x = self._features(old).astype(np.float64)
        gram = x.T @ x
        lam = ridge * np.trace(gram) / gram.shape[0]
        return np.linalg.solve(gram + lam * np.eye(gram.shape[0]), x.T @ (y - 0.0)).astype(np.float32)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def density(old: np.ndarray, k: int = 10) -> np.ndarray:
    """Mean cosine of each item to its ``k`` nearest other items in the old space: float32 [n]."""
    old = np.asarray(old, np.float32)
    kk = min(k + 1, len(old))
    scores, _ = search(old, old, kk)
    return scores[:, 1:].mean(1).astype(np.float32) if kk > 1 else np.zeros(len(old), np.float32)


def _ranks(x: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(-x, kind="stable"), kind="stable").astype(np.float64)


def plan_order(
    old: np.ndarray, strategy: str = "uncertainty", model: DisagreementModel | None = None, seed: int = 0
) -> np.ndarray:
    """A permutation of the gallery's item ids, most useful to re-embed first: int64 [n].

    Args:
        old: float32 [n, d_old] the gallery's old vectors.
        strategy: one of ``PLANS`` (see module docstring).
        model: the fitted ``DisagreementModel`` (``"uncertainty"`` and ``"spread"`` need it).
        seed: for ``"random"``.
    """
    old = np.asarray(old, np.float32)
    if strategy not in PLANS:
        raise XBTError(f"unknown plan {strategy!r}; use one of {list(PLANS)}")
    if strategy == "random":
        return np.random.default_rng(seed).permutation(len(old)).astype(np.int64)
    if strategy in ("uncertainty", "spread") and model is None:
        raise XBTError(f"plan {strategy!r} needs a DisagreementModel fitted on pairs (DisagreementModel.fit)")
    if strategy == "uncertainty":
        key = _ranks(model.predict(old))
    elif strategy == "density":
        key = _ranks(density(old))
    else:
        key = _round_robin(clusters(old, max(1, len(old) // 8), seed), _ranks(model.predict(old)))
    return np.argsort(key, kind="stable").astype(np.int64)


def clusters(old: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """k-means cluster id of each old vector (FAISS, spherical, 20 iterations): int64 [n]."""
    import faiss

    old = np.ascontiguousarray(old, np.float32)
    k = int(min(max(k, 1), len(old)))
    km = faiss.Kmeans(old.shape[1], k, niter=20, seed=seed, spherical=True, min_points_per_centroid=1, verbose=False)
    km.train(old)
    return km.index.search(old, 1)[1][:, 0].astype(np.int64)


def _round_robin(cluster: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """A sort key: each item's turn within its cluster (by ``rank``), ties broken by ``rank``."""
    order = np.lexsort((rank, cluster))
    turn = np.empty(len(cluster), np.float64)
    start = 0
    for c in np.unique(cluster[order]):
        size = int((cluster == c).sum())
        turn[order[start : start + size]] = np.arange(size)
        start += size
    return turn * len(rank) + rank

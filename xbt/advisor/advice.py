"""``xbt.advise(old, new, texts)``: will an adapter between these two models be backward compatible?

Before any pair is gathered or GPU hour spent: embed the texts with both models, measure how faithfully
the new text space carries the old one (``signals``), and apply one rule per direction calibrated on toy
worlds whose answer was measured (``python -m scripts.benchmarks.advisor --calibrate`` writes
``calibration.json`` beside this module, with each rule's error on worlds left out of its fit): backward
compatible where the signal clears a threshold, and a predicted Recall@1 change of adapter queries against
old->old of ``slope x (signal - threshold)``. The verdict is the sign of the prediction; the range is the
prediction plus or minus that error; the recommendation follows from the range:

- both directions' ranges above 0: the adapter alone;
- a range across 0: the adapter plus a partial backfill, and fit with pairs to measure the verdict;
- a range below 0: keep the old model's queries for that direction until a backfill (``MixedGallery``
  does so when the fitted adapter's own verdict agrees, ``adapters.verdict``).

Texts cannot show an image tower that lost what its text tower kept: the advice is a prior, and the
verdict measured on held-out pairs after ``fit`` (``adapter.verdicts()``) overrides it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import XBTError
from ..data.texts import iter_texts
from ..models.embedding import embed_texts
from .signals import SIGNALS, text_signals

CALIBRATION_FILE = Path(__file__).resolve().parent / "calibration.json"
DIRECTIONS = {"i2t": "image->text", "t2i": "text->image"}
RECOMMENDATIONS = ("adapter alone", "adapter plus partial backfill", "keep old queries until a backfill")


@dataclass(frozen=True)
class DirectionAdvice:
    """One direction's prediction: R@1 change of adapter queries against old->old, in points, +- ``error``."""

    direction: str
    predicted_change: float
    error: float

    @property
    def range(self) -> tuple[float, float]:
        return self.predicted_change - self.error, self.predicted_change + self.error

    @property
    def verdict(self) -> str:
        return "backward compatible" if self.predicted_change > 0 else "not backward compatible"

    def sentence(self) -> str:
        lo, hi = self.range
        return (
            f"{DIRECTIONS[self.direction]}: {self.verdict}, R@1 change against old->old predicted "
            f"{self.predicted_change:+.1f} points (range {lo:+.1f} to {hi:+.1f})"
        )


@dataclass
class Advice:
    """What ``advise`` found: the signals, each direction's prediction, the recommendation and why."""

    signals: dict[str, float]
    directions: dict[str, DirectionAdvice]
    recommendation: str
    reason: str
    n_texts: int
    seconds: float
    calibration: dict[str, Any] = field(repr=False, default_factory=dict)

    def summary(self) -> str:
        """Lines for a terminal: the verdict per direction, the recommendation and the signals it rests on."""
        lines = [f"xbt advise: {self.n_texts} distinct texts, {self.seconds:.0f} s"]
        lines += [f"  {d.sentence()}" for d in self.directions.values()]
        lines += [f"  recommendation: {self.recommendation}. {self.reason}"]
        lines += ["  signals: " + ", ".join(f"{k} {v:.3f}" for k, v in self.signals.items())]
        lines += [
            f"  calibrated on {len(self.calibration.get('worlds', []))} toy worlds; each range is the prediction "
            "+- its median error on worlds left out of the fit (half of them miss by more)"
        ]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["directions"] = {
            k: {**asdict(d), "verdict": d.verdict, "range": list(d.range)} for k, d in self.directions.items()
        }
        return out


def read_calibration(path: str | Path = CALIBRATION_FILE) -> dict[str, Any]:
    """The advisor's calibration: per direction ``{"feature", "threshold", "slope", "error"}`` and its worlds."""
    path = Path(path)
    if not path.is_file():
        raise XBTError(f"the advisor's calibration {path} is missing; make it with scripts.benchmarks.advisor")
    cal = json.loads(path.read_text())
    for d in DIRECTIONS:
        if cal.get("directions", {}).get(d, {}).get("feature") not in SIGNALS:
            raise XBTError(f"{path} has no usable line for {d}; remake it with scripts.benchmarks.advisor")
    return cal


def predict(signals: dict[str, float], calibration: dict[str, Any]) -> dict[str, DirectionAdvice]:
    """Each direction's ``DirectionAdvice`` from the signals and a calibration (``read_calibration``)."""
    out = {}
    for d in DIRECTIONS:
        rule = calibration["directions"][d]
        change = rule["slope"] * (signals[rule["feature"]] - rule["threshold"])
        out[d] = DirectionAdvice(d, round(float(change), 2), round(float(rule["error"]), 2))
    return out


def recommend(directions: dict[str, DirectionAdvice]) -> tuple[str, str]:
    """(recommendation, reason) from the directions' ranges (module docstring)."""
    below = [DIRECTIONS[d] for d, a in directions.items() if a.range[1] < 0]
    across = [DIRECTIONS[d] for d, a in directions.items() if a.range[0] <= 0 <= a.range[1]]
    if below:
        return RECOMMENDATIONS[2], (
            f"adapter queries are predicted to rank the old gallery worse than the old model in {' and '.join(below)}"
            " whatever the error: serve the old model's queries there (MixedGallery does once the adapter's own "
            "verdict agrees) and backfill"
        )
    if across:
        return RECOMMENDATIONS[1], (
            f"the prediction for {' and '.join(across)} is within its error of no change: fit with a few thousand "
            "pairs, whose held-out verdict decides, and plan a partial backfill"
        )
    return RECOMMENDATIONS[0], "adapter queries are predicted above old->old in both directions beyond the error"


def advise(
    old: Any,
    new: Any,
    texts: Iterable[str],
    seed: int = 0,
    calibration: str | Path | dict | None = None,
    verbose: bool = True,
) -> Advice:
    """Predict from texts alone whether adapter queries will be backward compatible (module docstring).

    Args:
        old, new: the two ``CLIPEncoder`` models (``xbt.load_clip``); only their text towers run.
        texts: captions like the gallery's (about 50,000 suffice; duplicates are dropped): a list, a
            ``datasets.Dataset`` or a ``pathlib.Path`` to a caption file (``data.texts.iter_texts``).
        calibration: a calibration file or dict (default: the one shipped beside this module).
        verbose: progress bars while embedding.
    """
    t0 = time.perf_counter()
    distinct = list(dict.fromkeys(t for t in iter_texts(texts) if t.strip()))
    cal = calibration if isinstance(calibration, dict) else read_calibration(calibration or CALIBRATION_FILE)
    o = embed_texts(old, distinct, verbose=verbose)
    n = embed_texts(new, distinct, verbose=verbose)
    signals = text_signals(o, n, seed=seed)
    directions = predict(signals, cal)
    rec, why = recommend(directions)
    return Advice(signals, directions, rec, why, len(distinct), time.perf_counter() - t0, cal)

"""``Report``: the outcome of an evaluation, as JSON, a markdown table and a PNG plot.

Recall dicts are direction (``"i2t"``, ``"t2i"``) -> K -> Recall@K in [0, 1]; rows are old->old,
new->old per method (``MethodResult``: recall, compatibility verdict, flips, gap closure, query
cost) and new->new. ``xbt.evaluate`` builds it; ``summary(name)`` is what an adapter keeps of it
for its model card.

A report may carry a *ceiling* (``set_ceiling``): the Recall@K of a query-side map on frozen new
features trained with abundant supervision against the old vectors - the best a frozen old gallery
lets a query reach, which new->new is not. Each method's *ceiling closure* is then
(new->old - old->old) / (ceiling - old->old), beside its gap closure against new->new.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import XBTError
from ..core.files import atomic_path, dumps_json, write_text
from .tables import DIRECTIONS, NEW_NEW, OLD_OLD, markdown, summary

DIRECTION_LABELS = {"i2t": "image→text", "t2i": "text→image"}


def closure(old_old: float, new_old: float, target: float) -> float | None:
    """(new_old - old_old) / (target - old_old): 1 reaches the target, 0 is old->old, < 0 worse.

    None when the target is not above old->old (no room to close: a ratio of two negative gaps
    would read as more than full closure)."""
    gap = target - old_old
    return None if gap < 1e-12 else (new_old - old_old) / gap


def _kd(d: dict[int, Any]) -> dict[str, Any]:
    return {str(k): v for k, v in d.items()}


def _ki(d: dict[str, Any]) -> dict[int, Any]:
    return {int(k): v for k, v in d.items()}


def paired_margin(pfr: float, nfr: float, n: int) -> tuple[float, float]:
    """(d, se): the Recall@K difference of two searches over the same ``n`` queries and its standard error.

    A verdict such as "new->old beats old->old" rests on d = pfr - nfr; whether d is more than noise depends on
    n. Each query flips to a hit (+1, share ``pfr``), flips to a miss (-1, share ``nfr``) or keeps its outcome
    (0); d is the mean of these paired differences, whose variance is pfr + nfr - d², so
    se = sqrt((pfr + nfr - d²) / n). Pairing (both searches answer the same queries) is why this is far
    smaller than the two recalls' own sampling errors.
    """
    if n < 1:
        raise XBTError(f"a margin needs at least one query, got n={n}")
    d = pfr - nfr
    return d, float(np.sqrt(max(pfr + nfr - d * d, 0.0) / n))


@dataclass
class MethodResult:
    """One upgrade method's new->old results and how they compare with old->old and new->new.

    All dicts are direction (``"i2t"``, ``"t2i"``) -> K -> value; rates are in [0, 1].
    """

    name: str
    recall: dict[str, dict[int, float]]
    compatible: dict[str, dict[int, bool]]
    pfr: dict[str, dict[int, float]]
    nfr: dict[str, dict[int, float]]
    delta: dict[str, dict[int, float]]
    gap_closure: dict[str, dict[int, float | None]]
    requires_old_encoder: bool = False
    query_cost: dict[str, float] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    ceiling_closure: dict[str, dict[int, float | None]] | None = None

    @property
    def backward_compatible(self) -> bool:
        """True when new->old beats old->old strictly at every K in both directions."""
        return all(all(v.values()) for v in self.compatible.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (K keys as strings)."""
        per = {
            name: {d: _kd(v) for d, v in getattr(self, name).items()}
            for name in ("recall", "compatible", "pfr", "nfr", "delta", "gap_closure")
        }
        return {
            "name": self.name,
            **per,
            "backward_compatible": self.backward_compatible,
            "requires_old_encoder": self.requires_old_encoder,
            "query_cost": self.query_cost,
            "info": self.info,
            "ceiling_closure": None
            if self.ceiling_closure is None
            else {d: _kd(v) for d, v in self.ceiling_closure.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MethodResult:
        """Inverse of ``to_dict``."""
        per = {
            name: {dr: _ki(v) for dr, v in d[name].items()}
            for name in ("recall", "compatible", "pfr", "nfr", "delta", "gap_closure")
        }
        cc = d.get("ceiling_closure")
        return cls(
            name=d["name"],
            **per,
            requires_old_encoder=bool(d.get("requires_old_encoder", False)),
            query_cost=d.get("query_cost"),
            info=dict(d.get("info", {})),
            ceiling_closure=None if cc is None else {dr: _ki(v) for dr, v in cc.items()},
        )


@dataclass
class Report:
    """The outcome of ``evaluate``: Recall@K of old->old, each method's new->old, and new->new.

    Recall dicts are direction (``"i2t"``, ``"t2i"``) -> K -> Recall@K in [0, 1]. ``new_new`` is
    ``None`` when no new model was evaluated. ``to_markdown()`` is the table users read;
    ``to_dict()`` is JSON-ready; ``plot(path)`` draws a PNG; ``save(folder)`` writes all three.
    """

    dataset: str
    split: str
    n_images: int
    n_captions: int
    ks: tuple[int, ...]
    old_model: str
    new_model: str | None
    index: str
    old_old: dict[str, dict[int, float]]
    new_new: dict[str, dict[int, float]] | None
    methods: dict[str, MethodResult] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    ceiling: dict[str, dict[int, float]] | None = None
    ceiling_label: str = "ceiling"

    def set_ceiling(self, recall: dict[str, dict], label: str = "ceiling") -> Report:
        """Attach a ceiling row (direction -> K -> Recall@K in [0, 1]) and each method's ceiling closure; returns
        self."""
        missing = [(d, k) for d in DIRECTIONS for k in self.ks if str(k) not in {str(x) for x in recall.get(d, {})}]
        if missing:
            raise XBTError(
                f"the ceiling lacks Recall@K for {missing}; give direction -> K -> recall for K in {list(self.ks)}"
            )
        self.ceiling = {d: {int(k): float(v) for k, v in recall[d].items() if int(k) in self.ks} for d in DIRECTIONS}
        self.ceiling_label = label
        for m in self.methods.values():
            m.ceiling_closure = {
                d: {k: closure(self.old_old[d][k], m.recall[d][k], self.ceiling[d][k]) for k in self.ks}
                for d in DIRECTIONS
            }
        return self

    @property
    def backward_compatible(self) -> dict[str, bool]:
        """Method name -> verdict (new->old strictly above old->old at every K, both directions)."""
        return {name: m.backward_compatible for name, m in self.methods.items()}

    def n_queries(self, direction: str) -> int:
        """The queries of a direction: each image searches the captions (i2t), each caption the images (t2i)."""
        if direction not in DIRECTIONS:
            raise XBTError(f"unknown direction {direction!r}; use one of {list(DIRECTIONS)}")
        return self.n_images if direction == "i2t" else self.n_captions

    def margin(self, name: str, direction: str, k: int) -> tuple[float, float]:
        """(d, se): method ``name``'s new->old minus old->old Recall@``k`` in ``direction`` and its standard
        error over that direction's queries (``paired_margin``), so a verdict can say how far it is from noise."""
        m = self.methods[name]
        return paired_margin(m.pfr[direction][k], m.nfr[direction][k], self.n_queries(direction))

    def rows(self) -> list[tuple[str, dict[str, dict[int, float]]]]:
        """(label, recall) per table row: old->old, new->old per method, new->new."""
        out = [(OLD_OLD, self.old_old)]
        out += [(f"new→old ({name})", m.recall) for name, m in self.methods.items()]
        if self.ceiling is not None:
            out.append((f"{self.ceiling_label} (frozen old gallery)", self.ceiling))
        if self.new_new is not None:
            out.append((NEW_NEW, self.new_new))
        return out

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (K keys are strings; rates in [0, 1])."""
        return {
            "dataset": self.dataset,
            "split": self.split,
            "n_images": self.n_images,
            "n_captions": self.n_captions,
            "ks": list(self.ks),
            "old_model": self.old_model,
            "new_model": self.new_model,
            "index": self.index,
            "old_old": {d: _kd(v) for d, v in self.old_old.items()},
            "new_new": None if self.new_new is None else {d: _kd(v) for d, v in self.new_new.items()},
            "methods": {n: m.to_dict() for n, m in self.methods.items()},
            "backward_compatible": self.backward_compatible,
            "timings": dict(self.timings),
            "ceiling": None if self.ceiling is None else {d: _kd(v) for d, v in self.ceiling.items()},
            "ceiling_label": self.ceiling_label,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Report:
        """Rebuild a report from ``to_dict()`` output (e.g. a saved report.json)."""
        return cls(
            dataset=d["dataset"],
            split=d["split"],
            n_images=int(d["n_images"]),
            n_captions=int(d["n_captions"]),
            ks=tuple(int(k) for k in d["ks"]),
            old_model=d["old_model"],
            new_model=d.get("new_model"),
            index=d["index"],
            old_old={dr: _ki(v) for dr, v in d["old_old"].items()},
            new_new=None if d.get("new_new") is None else {dr: _ki(v) for dr, v in d["new_new"].items()},
            methods={n: MethodResult.from_dict(m) for n, m in d.get("methods", {}).items()},
            timings=dict(d.get("timings", {})),
            ceiling=None if d.get("ceiling") is None else {dr: _ki(v) for dr, v in d["ceiling"].items()},
            ceiling_label=d.get("ceiling_label", "ceiling"),
        )

    def to_json(self) -> str:
        """``to_dict()`` as indented strict JSON text."""
        return dumps_json(self.to_dict())

    def summary(self, name: str) -> dict[str, Any]:
        """Method ``name``'s new->old results beside old->old and new->new, JSON-ready.

        What an adapter keeps of a report (``Adapter.attach_report``) for its model card.
        """
        if name not in self.methods:
            raise XBTError(f"the report has no method {name!r}; it has {sorted(self.methods)}")
        m = self.methods[name]
        return {
            "dataset": self.dataset,
            "split": self.split,
            "n_images": self.n_images,
            "n_captions": self.n_captions,
            "ks": list(self.ks),
            "row": name,
            "old_model": self.old_model,
            "new_model": self.new_model,
            "new_old": {d: _kd(v) for d, v in m.recall.items()},
            "old_old": {d: _kd(v) for d, v in self.old_old.items()},
            "new_new": None if self.new_new is None else {d: _kd(v) for d, v in self.new_new.items()},
            "backward_compatible": m.backward_compatible,
            # the verdict's margin per direction and K with its noise (``margin``): what the card says beside it
            "margin": {
                d: {str(k): dict(zip(("delta", "se"), self.margin(name, d, k)), n=self.n_queries(d)) for k in self.ks}
                for d in DIRECTIONS
            },
        }

    def to_markdown(self) -> str:
        """The results as markdown: the Recall@K table, the flip/gap table, and a verdict per method."""
        return markdown(self)

    def to_summary(self, width: int | None = None) -> str:
        """A plain-text table for a terminal (``width`` columns, default the terminal's): R@K per row, each
        method's ceiling (or gap) closure at R@1 and its verdict. The full story is ``to_markdown()``."""
        return summary(self, width)

    def plot(self, path: str | os.PathLike) -> Path:
        """Draw Recall@K per row as grouped bars, one panel per direction; write a PNG to ``path``."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        rows = self.rows()
        fig = Figure(figsize=(5 + 1.2 * len(self.ks) * len(rows) / 3, 4), dpi=110)
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, 2, sharey=True)
        width = 0.8 / len(rows)
        x = np.arange(len(self.ks))
        for ax, d in zip(axes, DIRECTIONS):
            for r, (label, rec) in enumerate(rows):
                ax.bar(x + (r - (len(rows) - 1) / 2) * width, [100 * rec[d][k] for k in self.ks], width, label=label)
            ax.set_xticks(x, [f"R@{k}" for k in self.ks])
            ax.set_title(DIRECTION_LABELS[d])
            ax.grid(axis="y", alpha=0.3)
        axes[0].set_ylabel("Recall@K (%)")
        # The legend goes to the right of both panels so it never hides a bar.
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
        fig.suptitle(f"{self.dataset} ({self.split}): {self.n_images:,} images")
        fig.tight_layout()
        target = Path(path)
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format="png", bbox_inches="tight")
        return target

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``report.json``, ``report.md`` and ``report.png`` into ``folder`` (each atomically)."""
        out = Path(folder)
        write_text(out / "report.json", self.to_json())
        write_text(out / "report.md", self.to_markdown())
        self.plot(out / "report.png")
        return out

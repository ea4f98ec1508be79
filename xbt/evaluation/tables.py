"""How a ``Report`` reads: the full markdown (report.md) and the terminal summary, and the labels both use.

Each function takes the ``Report`` (``evaluation.report``, which imports this module: the table knows
the report only by its attributes).

``markdown`` is the whole story: every row at every K, flips, gap and ceiling closure per (method,
direction, K), a verdict per method and the query-cost note. ``summary`` is what fits a terminal:
one line per row, R@K in both directions, each method's closure at R@1 and its verdict.
"""

from __future__ import annotations

import shutil
import textwrap
from typing import Any

DIRECTIONS = ("i2t", "t2i")
OLD_OLD, NEW_NEW = "old→old", "new→new"
#: queries timed for the "query cost vs bare new" column (``evaluate`` times them)
COST_TEXTS, COST_IMAGES = 256, 64
#: interleaved rounds whose median ratio is the column
COST_ROUNDS = 7

#: the summary never grows wider than this, whatever the terminal
MAX_WIDTH = 100
_COL = 7  # one recall or closure cell: '100.00' and a space


def _num(x: float) -> str:
    s = f"{x:.2f}"
    return "0.00" if s == "-0.00" else s


def _pct(x: float | None) -> str:
    return "–" if x is None else _num(100 * x)


def markdown(report: Any) -> str:
    """The results as markdown: the Recall@K table, the flip/gap table, and a verdict per method."""
    ks = report.ks
    lines = [
        f"### Retrieval on {report.dataset} ({report.split}): {report.n_images:,} images, "
        f"{report.n_captions:,} captions",
        "",
        f"old model `{report.old_model}` · new model `{report.new_model or '–'}` · search: {report.index} · Recall@K "
        "in %",
        "",
    ]
    head = ["row", "needs old encoder at query", "query cost vs bare new"]
    head += [f"I2T R@{k}" for k in ks] + [f"T2I R@{k}" for k in ks]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, rec in report.rows():
        m = next((m for n, m in report.methods.items() if label == f"new→old ({n})"), None)
        needs = (
            ("yes" if m.requires_old_encoder else "no") if m is not None else ("no" if label in (NEW_NEW,) else "–")
        )
        if m is not None and m.query_cost:
            cost = " · ".join(f"{kind} {r:.2f}×" for kind, r in m.query_cost.items())
        else:
            cost = "1.00× (is the new model)" if label == NEW_NEW else "–"
        cells = [label, needs, cost] + [_pct(rec[d].get(k)) for d in DIRECTIONS for k in ks]
        lines.append("| " + " | ".join(cells) + " |")
    if report.methods:
        ceiling = report.ceiling is not None
        lines += [
            "",
            "Against old→old (Δ = new→old − old→old; PFR/NFR = positive/negative flip rate; "
            "gap closure = Δ / (new→new − old→old)"
            + ("; ceiling closure = Δ / (ceiling − old→old)" if ceiling else "")
            + "):",
            "",
        ]
        head = ["method", "direction", "K", "Δ R@K", "PFR", "NFR", "PFR − NFR", "gap closure"]
        head += ["ceiling closure"] if ceiling else []
        head += ["new→old > old→old"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name, m in report.methods.items():
            for d in DIRECTIONS:
                for k in ks:
                    gc = m.gap_closure[d][k]
                    cells = [
                        name,
                        d.upper(),
                        str(k),
                        _pct(m.recall[d][k] - report.old_old[d][k]),
                        _pct(m.pfr[d][k]),
                        _pct(m.nfr[d][k]),
                        _pct(m.delta[d][k]),
                        "–" if gc is None else _num(gc),
                    ]
                    if ceiling:
                        cc = (m.ceiling_closure or {}).get(d, {}).get(k)
                        cells.append("–" if cc is None else _num(cc))
                    cells.append("yes" if m.compatible[d][k] else "no")
                    lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        for name, m in report.methods.items():
            wins = sum(v for per_k in m.compatible.values() for v in per_k.values())
            total = sum(len(per_k) for per_k in m.compatible.values())
            if m.backward_compatible:
                why = "new→old is strictly above old→old at every K in both directions"
            else:
                why = f"new→old is strictly above old→old at {wins} of {total} (direction, K) pairs; all are needed"
            lines.append(f"- **{name}**: backward compatible: **{'yes' if m.backward_compatible else 'no'}** ({why})")
        if any(m.query_cost for m in report.methods.values()):
            lines += [
                "",
                f"Query cost: time to encode the same sample (up to {COST_TEXTS} captions, {COST_IMAGES} images) "
                "with the "
                f"method divided by the bare new model's time: the median over {COST_ROUNDS} interleaved rounds, "
                "uncached, from one run on this machine (scripts/benchmarks/query_cost.py measures it properly).",
            ]
    return "\n".join(lines) + "\n"


def summary(report: Any, width: int | None = None) -> str:
    """The report as a plain-text table no wider than ``width`` (default: the terminal, at most ``MAX_WIDTH``)
    where the table with two K per direction fits it (with the toy world's names, 80 columns do).

    Rows: old->old, each method (marked ``*`` where its queries need the OLD encoder too), the
    ceiling and new->new. Columns: R@K (%) per direction - only the smallest and largest K where all
    do not fit - then each method's closure at the smallest K (against the ceiling where the report
    has one, else against new->new) and its verdict. Method names are never cut.
    """
    width = min(width or shutil.get_terminal_size((MAX_WIDTH, 24)).columns, MAX_WIDTH)
    ceiling = report.ceiling is not None
    rows = [(OLD_OLD, report.old_old, None)]
    rows += [(name + (" *" if m.requires_old_encoder else ""), m.recall, m) for name, m in report.methods.items()]
    if ceiling:
        rows.append((report.ceiling_label, report.ceiling, None))
    if report.new_new is not None:
        rows.append((NEW_NEW, report.new_new, None))
    name_w = max(len(label) for label, _, _ in rows) + 1
    k1 = min(report.ks)
    tail = ["cl.I2T", "cl.T2I", "compat."] if report.methods else []
    ks = report.ks
    if len(ks) > 2 and name_w + (2 * len(ks) + len(tail)) * _COL + len(tail) + 4 > width:
        ks = (ks[0], ks[-1])

    def line(name: str, cells: list[str]) -> str:
        # a 2-space gap before each direction's first K
        n_recall = 2 * len(ks)
        parts = [
            c.rjust(_COL + (2 if i < n_recall and i % len(ks) == 0 else 0 if i < n_recall else 1))
            for i, c in enumerate(cells)
        ]
        return (name.ljust(name_w) + "".join(parts)).rstrip()

    heads = [f"{d.upper()} R@{k}" if i == 0 else f"R@{k}" for d in DIRECTIONS for i, k in enumerate(ks)]
    lines = [
        f"{report.dataset} ({report.split}): {report.n_images:,} images, {report.n_captions:,} captions; "
        "Recall@K in %",
        "",
        line("", heads + tail),
    ]
    for label, rec, m in rows:
        cells = [_pct(rec[d].get(k)) for d in DIRECTIONS for k in ks]
        if m is not None:
            close = m.ceiling_closure if ceiling else m.gap_closure
            cells += ["–" if (close or {}).get(d, {}).get(k1) is None else _num(close[d][k1]) for d in DIRECTIONS]
            cells.append("yes" if m.backward_compatible else "no")
        lines.append(line(label, cells))
    notes = []
    if report.methods:
        target = "the ceiling (the best through the frozen old gallery)" if ceiling else "new→new"
        notes.append(
            f"cl.: the share of the room from old→old to {target} closed at R@{k1}. compat.: backward compatible, "
            "above old→old at every K in both directions."
        )
    if any(m.requires_old_encoder for m in report.methods.values()):
        notes.append("*: its queries also run the OLD encoder.")
    lines.append("")
    lines += [w for note in notes for w in textwrap.wrap(note, width)]
    return "\n".join(lines) + "\n"

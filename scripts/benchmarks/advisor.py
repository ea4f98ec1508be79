"""The upgrade advisor against measured answers: every toy world, its signals, plain fit's verdict, the error.

    python -m scripts.benchmarks.advisor                 # measure every world (resumable), print the table
    python -m scripts.benchmarks.advisor --calibrate     # ... and write xbt/advisor/calibration.json

For each world of ``xbt.toy.WORLDS`` (shapes, patterns, patterns-wide) and the worlds built for the
advisor (``ADVISOR_WORLDS``): ``xbt.advise`` on 50,000 captions of the world's corpus, timed cold (its
signals); then the measured answer: plain ``xbt.fit(old, new, texts, pairs=world.pairs(2000))`` (seed
0) evaluated on the test split, its R@1 change against old->old per direction, whether it is backward
compatible there (strictly above old->old at R@1, R@5 and R@10), and the fitted adapter's own held-out
verdict. Each world is written to ``--out``/worlds/<world>.json as it finishes, so a stopped run resumes.

The calibration is one rule per direction on one signal: backward compatible above a threshold, and
R@1 change = slope x (signal - threshold) (``fit_rule``), on the signal whose rules fitted without each
world in turn match the most left-out verdicts, then miss their R@1 change least; the stated error (the
advice's range) is the median of those misses: half the left-out worlds fall within it (the RMS and the
largest miss are printed beside it). The table shows each world's prediction from the rule fitted *without*
it, so the verdicts and errors shown are those on worlds the advisor was not calibrated on. Writes
``--out``/advisor.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import xbt
from xbt.adapters.verdict import verdicts
from xbt.advisor.advice import CALIBRATION_FILE, DIRECTIONS, predict, recommend
from xbt.advisor.signals import SIGNALS, text_signals
from xbt.core.files import write_json
from xbt.models.embedding import embed_texts
from xbt.toy.worlds import ADVISOR_WORLDS, WORLDS, load_toy

ALL_WORLDS = {**WORLDS, **ADVISOR_WORLDS}

KS = (1, 5, 10)


def advise_time(name: str, n_texts: int) -> tuple[dict, int, float]:
    """(signals, distinct texts, seconds) of the advisor on the world's corpus, embedding cache off (cold)."""
    world = ALL_WORLDS[name]
    old, new = world.load_clips()
    t0 = time.perf_counter()
    distinct = list(dict.fromkeys(world.text_corpus(n_texts)))
    signals = text_signals(embed_texts(old, distinct, cache=False), embed_texts(new, distinct, cache=False))
    return signals, len(distinct), time.perf_counter() - t0


def measure(name: str, n_texts: int, n_pairs: int) -> dict:
    """One world's signals (and the advisor's time) and plain fit's measured answer."""
    world = ALL_WORLDS[name]
    old, new = world.load_clips()
    signals, n_distinct, advise_seconds = advise_time(name, n_texts)
    t1 = time.perf_counter()
    adapter = xbt.fit(old, new, world.text_memory(n_texts), pairs=world.pairs(n_pairs), verbose=False)
    fit_seconds = time.perf_counter() - t1
    report = xbt.evaluate(old, adapter, dataset=load_toy(world=name), query_cost=False, verbose=False)
    rec = report.methods[next(iter(report.methods))].recall
    pct = lambda r: {d: {k: round(100 * r[d][k], 2) for k in KS} for d in DIRECTIONS}  # noqa: E731
    new_old, old_old, new_new = pct(rec), pct(report.old_old), pct(report.new_new)
    return {
        "world": name,
        "new_model": world.new_model,
        "signals": signals,
        "n_texts": n_distinct,
        "advise_seconds": round(advise_seconds, 1),
        "fit_seconds": round(fit_seconds, 1),
        "old_old": old_old,
        "new_old": new_old,
        "new_new": new_new,
        "change_r1": {d: round(new_old[d][1] - old_old[d][1], 2) for d in DIRECTIONS},
        "backward_compatible": {d: all(new_old[d][k] > old_old[d][k] for k in KS) for d in DIRECTIONS},
        "pair_verdict": {
            d: v.verdict for d, v in zip(("t2i", "i2t"), (verdicts(adapter.training)[m] for m in ("text", "image")))
        },
    }


def fit_rule(x: np.ndarray, bc: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(threshold, slope) of one direction's rule on training worlds: backward compatible where the signal is above
    ``threshold`` (the midpoint, among those that misclassify fewest worlds, in the middle of their run), and
    R@1 change = slope x (signal - threshold), the slope the median of the worlds' own (robust to one extreme world).
    """
    xs = np.unique(x)
    cands = np.concatenate([[xs[0] - 1e-3], (xs[1:] + xs[:-1]) / 2, [xs[-1] + 1e-3]])
    errors = np.array([np.sum((x > t) != bc) for t in cands])
    best = cands[errors == errors.min()]
    threshold = float(best[len(best) // 2])
    far = np.abs(x - threshold) > 1e-3
    slope = float(np.median(y[far] / (x[far] - threshold))) if far.any() else 0.0
    return threshold, slope


def calibrate(rows: list[dict]) -> tuple[dict, dict]:
    """The calibration (one rule per direction on the signal whose rules, fitted without each world in turn,
    match the most left-out verdicts, then miss their R@1 change least) and each world's left-out prediction."""
    cal, held_out = {"directions": {}, "worlds": [r["world"] for r in rows]}, {r["world"]: {} for r in rows}
    for d in DIRECTIONS:
        y = np.array([r["change_r1"][d] for r in rows])
        bc = np.array([r["backward_compatible"][d] for r in rows])
        best = None
        for feature in SIGNALS:
            x = np.array([r["signals"][feature] for r in rows])
            loo = []
            for i in range(len(x)):
                keep = np.arange(len(x)) != i
                t, s = fit_rule(x[keep], bc[keep], y[keep])
                loo.append(s * (x[i] - t))
            loo = np.array(loo)
            key = (-int(np.sum((loo > 0) == bc)), float(np.sqrt(np.mean((loo - y) ** 2))))
            if best is None or key < best[0]:
                best = (key, feature, loo, x)
        _, feature, loo, x = best
        threshold, slope = fit_rule(x, bc, y)
        miss = np.abs(loo - y)
        cal["directions"][d] = {
            "feature": feature,
            "threshold": round(threshold, 4),
            "slope": round(slope, 2),
            "error": round(float(np.median(miss)), 2),  # the range: half the left-out worlds fall within it
            "rms_error": round(float(np.sqrt(np.mean(miss**2))), 2),
            "largest_error": round(float(miss.max()), 2),
        }
        for r, p in zip(rows, loo):
            held_out[r["world"]][d] = round(float(p), 2)
    return cal, held_out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worlds", nargs="+", default=list(ALL_WORLDS), choices=list(ALL_WORLDS))
    p.add_argument("--texts", type=int, default=50_000)
    p.add_argument("--pairs", type=int, default=2000)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 beside other work)")
    p.add_argument(
        "--retime",
        action="store_true",
        help="run the advisor again (signals, time) on worlds already measured; their fits are kept",
    )
    p.add_argument("--calibrate", action="store_true", help=f"write {CALIBRATION_FILE.name} from these worlds")
    p.add_argument("--out", default="benchmarks/out/advisor")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    (out / "worlds").mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.worlds:
        path = out / "worlds" / f"{name}.json"
        if path.is_file():
            rows.append(json.loads(path.read_text()))
            if args.retime:
                signals, _, seconds = advise_time(name, args.texts)
                rows[-1]["signals"], rows[-1]["advise_seconds"] = signals, round(seconds, 1)
                write_json(path, rows[-1])
                print(f"[{name}] advise {seconds:.0f} s (cold)", flush=True)
            continue
        print(f"[{name}] measuring ...", flush=True)
        rows.append(measure(name, args.texts, args.pairs))
        write_json(path, rows[-1])
        print(f"[{name}] advise {rows[-1]['advise_seconds']:.0f} s, fit {rows[-1]['fit_seconds']:.0f} s", flush=True)
    cal, held_out = calibrate(rows)
    print(
        "\n| world | " + " | ".join(SIGNALS) + " | dir | measured R@1 change | backward compatible | "
        "pair verdict | advisor (left out) | verdict matches |"
    )
    print("|---" * (len(SIGNALS) + 7) + "|")
    matches = []
    for r in rows:
        for d in DIRECTIONS:
            pred = held_out[r["world"]][d]
            ok = (pred > 0) == r["backward_compatible"][d]
            matches.append(ok)
            print(
                f"| {r['world']} | "
                + " | ".join(f"{r['signals'][s]:.3f}" for s in SIGNALS)
                + f" | {d} | {r['change_r1'][d]:+.2f} | {'yes' if r['backward_compatible'][d] else 'no'} | "
                f"{r['pair_verdict'][d]} | {pred:+.2f} | {'yes' if ok else 'NO'} |"
            )
    for d, rule in cal["directions"].items():
        print(
            f"{d}: backward compatible where {rule['feature']} > {rule['threshold']:.4f}; R@1 change = "
            f"{rule['slope']:.1f} x ({rule['feature']} - {rule['threshold']:.4f}); error on worlds left out: median "
            f"{rule['error']:.2f} (the range), RMS {rule['rms_error']:.2f}, largest {rule['largest_error']:.2f} points"
        )
    slowest = max(r["advise_seconds"] for r in rows)
    print(f"verdicts matching on worlds left out: {sum(matches)}/{len(matches)}; slowest advise {slowest:.0f} s")
    result = {
        "worlds": rows,
        "calibration": cal,
        "held_out_predictions": held_out,
        "matches": sum(matches),
        "checks": len(matches),
    }
    for r in rows:
        full = predict(r["signals"], {**cal, "directions": cal["directions"]})
        r["recommendation"] = recommend(full)[0]
    write_json(out / "advisor.json", result)
    if args.calibrate:
        write_json(CALIBRATION_FILE, {**cal, "made_by": "python -m scripts.benchmarks.advisor --calibrate"})
        print(f"wrote {CALIBRATION_FILE}")
    print(f"wrote {out / 'advisor.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

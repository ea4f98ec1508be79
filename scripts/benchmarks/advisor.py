"""The upgrade advisor against measured answers: every toy world, its signals, plain fit's verdict, the error.

    python -m scripts.benchmarks.advisor                 # measure every world (resumable), print the table
    python -m scripts.benchmarks.advisor --calibrate     # ... and write xbt/advisor/calibration.json

For each world of ``xbt.toy.WORLDS`` (shapes, patterns, patterns-wide) and the worlds built for the
advisor (``ADVISOR_WORLDS``): ``xbt.advise`` on 50,000 captions of the world's corpus, timed cold (its
signals); then the measured answer: plain ``xbt.fit(old, new, texts, pairs=world.pairs(2000))`` (seed
0) evaluated on the test split, its R@1 change against old->old per direction, whether it is backward
compatible there (strictly above old->old at R@1, R@5 and R@10), and the fitted adapter's own held-out
verdict. Each world is written to ``--out``/worlds/<world>.json as it finishes, so a stopped run resumes.

The calibration is one line per direction, R@1 change = intercept + slope x signal, on the signal whose
leave-one-world-out error is smallest; its stated error is the largest leave-one-world-out miss. The
table shows each world's prediction from the line fitted *without* it, so the verdicts and errors shown
are those on worlds the advisor was not calibrated on. Writes ``--out``/advisor.json.
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


def fit_line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(slope, intercept) of the least-squares line y ~ x."""
    slope, intercept = np.polyfit(x, y, 1)
    return float(slope), float(intercept)


def calibrate(rows: list[dict]) -> tuple[dict, dict]:
    """The calibration (one line per direction, signal chosen by leave-one-world-out error) and each world's
    leave-one-out prediction per direction."""
    cal, held_out = {"directions": {}, "worlds": [r["world"] for r in rows]}, {r["world"]: {} for r in rows}
    for d in DIRECTIONS:
        y = np.array([r["change_r1"][d] for r in rows])
        best = None
        for feature in SIGNALS:
            x = np.array([r["signals"][feature] for r in rows])
            loo = np.array([np.polyval(np.polyfit(np.delete(x, i), np.delete(y, i), 1), x[i]) for i in range(len(x))])
            err = float(np.abs(loo - y).max())
            if best is None or err < best[1]:
                best = (feature, err, loo, x)
        feature, err, loo, x = best
        slope, intercept = fit_line(x, y)
        cal["directions"][d] = {
            "feature": feature,
            "slope": round(slope, 4),
            "intercept": round(intercept, 4),
            "error": round(err, 2),
            "leave_one_out_rms": round(float(np.sqrt(np.mean((loo - y) ** 2))), 2),
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
    for d, line in cal["directions"].items():
        print(
            f"{d}: change = {line['intercept']:+.2f} + {line['slope']:.2f} x {line['feature']}; largest error on a "
            f"world left out {line['error']:.2f} points (RMS {line['leave_one_out_rms']:.2f})"
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

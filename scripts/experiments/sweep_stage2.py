"""Stage-2 settings on both toy worlds and several seeds, judged by the worst case.

    python -m scripts.experiments.sweep_stage2                                  # defaults only: the acceptance table
    python -m scripts.experiments.sweep_stage2 --settings default "no text head" "caption bank: old" ...

For every world and seed: stage 1 on 50,000 captions of the world's text corpus (once, reused by
every setting through ``xbt.fit(..., stage1=...)``), then ``xbt.fit(old, new, texts, pairs=2,000
pairs, stage2=setting)`` exactly as a user calls it (the pairs' old vectors embedded by ``fit``),
SLERP with alpha chosen on the same pairs, and the world's ceiling (``python -m scripts.benchmarks.ceiling``, when
measured). Each run is checked against the three acceptance lines:

- backward compatible: new->old strictly above old->old at R@1/5/10 in both directions;
- R@1 at or above stage 1 alone (same seed), both directions;
- R@1 at or above SLERP, both directions.

The *margin* of a run is the smallest of those differences (R@K - old->old, R@1 - stage 1,
R@1 - SLERP, in points; strict inequality for the first), so a setting's worst margin over
worlds x seeds says how safely it passes everywhere; defaults are chosen by it. Prints a table per
world and the summary; writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import xbt
from scripts.benchmarks.ceiling import read_ceiling
from xbt import toy
from xbt.core.files import write_json
from xbt.toy.worlds import load_toy

ROOT = Path(__file__).resolve().parents[2]

#: each setting changes one thing in Stage2Config against the defaults
SETTINGS = {
    "default": {},
    "no text head": {"text_head": False},
    "no guard": {"guard": False},
    "caption bank: old vectors": {"caption_bank": "old"},
    "no confidence weighting": {"confidence_weighting": False},
    "no keep term": {"image_keep_weight": 0.0},
    "image epochs 10": {"epochs": 10},
    "text epochs 6": {"text_epochs": 6},
    "val_fraction 0.1": {"val_fraction": 0.1},
}
KS = (1, 5, 10)
DIRS = ("i2t", "t2i")


def checks(rec: dict, old_old: dict, stage1: dict, slerp: dict) -> dict:
    """The acceptance lines of one run (recall in %), with the margin of each."""
    bc = min(rec[d][k] - old_old[d][k] for d in DIRS for k in KS)
    vs1 = min(rec[d][1] - stage1[d][1] for d in DIRS)
    vss = min(rec[d][1] - slerp[d][1] for d in DIRS)
    return {
        "backward_compatible": bc > 0,
        "above_stage1": vs1 >= 0,
        "above_slerp": vss >= 0,
        "margin_bc": round(bc, 2),
        "margin_stage1": round(vs1, 2),
        "margin_slerp": round(vss, 2),
        "margin": round(min(bc, vs1, vss), 2),
        "pass": bc > 0 and vs1 >= 0 and vss >= 0,
    }


def run_world(name: str, seeds, settings, n_texts: int, n_pairs: int) -> dict:
    world = toy.get_world(name)
    old, new = world.load_clips()
    texts, pairs = world.text_corpus(n_texts), world.pairs(n_pairs)
    adapters = {"slerp": xbt.fit(old, new, texts, pairs=pairs, method="slerp", verbose=False)}
    kept = {}
    for seed in seeds:
        stage1 = xbt.fit(old, new, texts, seed=seed, verbose=False)
        adapters[f"seed {seed} | stage 1"] = stage1
        for setting in settings:
            t0 = time.perf_counter()
            a = xbt.fit(
                old, new, texts, pairs=pairs, seed=seed, stage1=stage1, stage2=SETTINGS[setting], verbose=False
            )
            adapters[f"seed {seed} | {setting}"] = a
            kept[f"seed {seed} | {setting}"] = {m: a.training["kept"][m]["kept"] for m in ("text", "image")}
            print(
                f"[{name}] seed {seed}: {setting} fitted in {time.perf_counter() - t0:.0f}s, kept "
                f"{kept[f'seed {seed} | {setting}']}",
                flush=True,
            )
    ceiling = read_ceiling(name)
    report = xbt.evaluate(
        old, adapters, dataset=load_toy(world=name), query_cost=False, verbose=False, ceiling=ceiling
    )
    pct = lambda r: {d: {k: round(100 * r[d][k], 2) for k in KS} for d in DIRS}  # noqa: E731
    old_old, new_new = pct(report.old_old), pct(report.new_new)
    slerp = pct(report.methods["slerp"].recall)
    runs = {}
    for seed in seeds:
        s1 = pct(report.methods[f"seed {seed} | stage 1"].recall)
        for setting in ["stage 1", *settings]:
            key = f"seed {seed} | {setting}"
            m = report.methods[key]
            rec = pct(m.recall)
            runs[key] = {
                "world": name,
                "seed": seed,
                "setting": setting,
                "recall": rec,
                "kept": kept.get(key),
                "ceiling_closure_r1": None
                if m.ceiling_closure is None
                else {d: m.ceiling_closure[d][1] for d in DIRS},
                "gap_closure_r1": {d: m.gap_closure[d][1] for d in DIRS},
                **checks(rec, old_old, s1, slerp),
            }
    return {
        "world": name,
        "old_old": old_old,
        "new_new": new_new,
        "slerp": slerp,
        "ceiling": None if ceiling is None else pct({d: {int(k): v for k, v in ceiling[d].items()} for d in DIRS}),
        "runs": runs,
        "markdown": report.to_markdown(),
    }


def print_world(res: dict, seeds, settings) -> None:
    fmt = lambda r: f"{r['i2t'][1]:.2f} / {r['t2i'][1]:.2f}"  # noqa: E731
    print(
        f"\n## {res['world']}: R@1 I2T / T2I (old→old {fmt(res['old_old'])}, SLERP {fmt(res['slerp'])}, "
        f"ceiling {fmt(res['ceiling']) if res['ceiling'] else '–'}, new→new {fmt(res['new_new'])})"
    )
    print("| setting | " + " | ".join(f"seed {s}" for s in seeds) + " | passes | worst margin |")
    print("|---|" + "---|" * (len(seeds) + 2))
    for setting in ["stage 1", *settings]:
        rows = [res["runs"][f"seed {s} | {setting}"] for s in seeds]
        cells = " | ".join(fmt(r["recall"]) + ("" if r["pass"] else " ✗") for r in rows)
        print(
            f"| {setting} | {cells} | {sum(r['pass'] for r in rows)}/{len(rows)} | "
            f"{min(r['margin'] for r in rows):+.2f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worlds", nargs="+", default=["shapes", "patterns"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--settings", nargs="+", default=["default"], choices=list(SETTINGS))
    parser.add_argument("--texts", type=int, default=50_000)
    parser.add_argument("--pairs", type=int, default=2_000)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "stage2_sweep.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    start = time.perf_counter()
    results = {w: run_world(w, args.seeds, args.settings, args.texts, args.pairs) for w in args.worlds}
    for res in results.values():
        print_world(res, args.seeds, args.settings)
    print("\n## worst case over worlds × seeds")
    print("| setting | runs passing | worst margin (points) | worst vs old→old | worst vs stage 1 | worst vs SLERP |")
    print("|---|---|---|---|---|---|")
    summary = {}
    for setting in ["stage 1", *args.settings]:
        rows = [r for res in results.values() for k, r in res["runs"].items() if r["setting"] == setting]
        summary[setting] = {
            "passing": sum(r["pass"] for r in rows),
            "runs": len(rows),
            **{m: min(r[m] for r in rows) for m in ("margin", "margin_bc", "margin_stage1", "margin_slerp")},
        }
        s = summary[setting]
        print(
            f"| {setting} | {s['passing']}/{s['runs']} | {s['margin']:+.2f} | {s['margin_bc']:+.2f} | "
            f"{s['margin_stage1']:+.2f} | "
            f"{s['margin_slerp']:+.2f} |"
        )
    write_json(
        args.out,
        {
            "args": {k: str(v) for k, v in vars(args).items()},
            "results": results,
            "summary": summary,
            "wall_seconds": round(time.perf_counter() - start, 1),
        },
    )
    print(f"wrote {args.out} ({time.perf_counter() - start:.0f}s)")


if __name__ == "__main__":
    main()

"""Sweep XBT stage-1 hyperparameters on the toy world: noise level x cosine weight.

    python -m scripts.experiments.sweep_stage1 --out benchmarks/out/stage1_sweep.json

For each (noise_std, cosine_weight) it fits stage 1 on the 50,000-caption toy corpus and reports
new->old R@1 (image->text / text->image) on the toy test gallery, beside old->old and new->new.
This is how the defaults in ``xbt.method.config.Stage1Config`` were chosen.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import xbt
from xbt import toy

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "stage1_sweep.json")
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.2])
    parser.add_argument("--cosine", type=float, nargs="+", default=[0.5, 1.0, 5.0])
    parser.add_argument("--texts", type=int, default=50_000)
    args = parser.parse_args()

    start = time.perf_counter()
    old, new = toy.load_clips()
    texts = toy.text_corpus(args.texts)
    adapters = {}
    for noise, cos in itertools.product(args.noise, args.cosine):
        adapters[f"noise={noise} cos={cos}"] = xbt.fit(
            old, new, texts, noise_std=noise, cosine_weight=cos, verbose=False
        )
        print(f"fitted noise={noise} cos={cos} ({time.perf_counter() - start:.0f}s)", flush=True)
    report = xbt.evaluate(old, adapters, dataset="toy", verbose=False, query_cost=False)

    def r1(rec):
        return {d: round(100 * rec[d][1], 2) for d in ("i2t", "t2i")}

    rows = {name: r1(m.recall) for name, m in report.methods.items()}
    result = {
        "old->old": r1(report.old_old),
        "new->new": r1(report.new_new),
        "stage1": rows,
        "wall_seconds": round(time.perf_counter() - start, 1),
    }
    print(f"\nold->old {result['old->old']}  new->new {result['new->new']}")
    print("| noise_std \\ cosine_weight | " + " | ".join(str(c) for c in args.cosine) + " |")
    print("|---|" + "---|" * len(args.cosine))
    for noise in args.noise:
        cells = [rows[f"noise={noise} cos={c}"] for c in args.cosine]
        print(f"| {noise} | " + " | ".join(f"{v['i2t']:.1f} / {v['t2i']:.1f}" for v in cells) + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out} in {result['wall_seconds']:.0f}s")


if __name__ == "__main__":
    main()

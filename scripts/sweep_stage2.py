"""Compare XBT stage-2 loss settings on the toy world across seeds.

    python scripts/sweep_stage2.py --out benchmarks/out/stage2_sweep.json

For seeds 0, 1, 2: fit stage 1 (50,000 captions), then stage 2 on 2,000 pairs with the old
gallery vectors of the pair images under each setting below; evaluate all on the toy test gallery
and print new->old R@1 (I2T / T2I) per seed and the mean. This is how the ``Stage2Config``
defaults were chosen: by the mean over seeds, not by one lucky seed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import xbt  # noqa: E402
from xbt import toy  # noqa: E402
from xbt.adapter import Adapter  # noqa: E402
from xbt.embed import embed_images  # noqa: E402
from xbt.lora import Stage2Config, train_stage2  # noqa: E402

SETTINGS = {
    "keep5 (no caption bank)": {"image_keep_weight": 5.0, "image_anchor_weight": 0.0},
    "keep5 + bank 0.3": {"image_keep_weight": 5.0, "image_anchor_weight": 0.3},
    "keep5, low lr": {"image_keep_weight": 5.0, "image_anchor_weight": 0.0, "lr": 1e-4, "projection_lr": 2e-5},
    "keep10 + bank 0.3": {"image_keep_weight": 10.0, "image_anchor_weight": 0.3},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "stage2_sweep.json")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--pairs", type=int, default=2000)
    args = parser.parse_args()

    start = time.perf_counter()
    old, new = toy.load_clips()
    texts = toy.text_corpus(50_000)
    pairs = toy.pair_list(args.pairs)
    images, captions = [p[0] for p in pairs], [p[1] for p in pairs]
    old_vectors = embed_images(old, images, verbose=False)
    adapters = {}
    for seed in args.seeds:
        stage1 = xbt.fit(old, new, texts, seed=seed, verbose=False)
        adapters[f"seed{seed} | stage 1"] = stage1
        for name, options in SETTINGS.items():
            lora, projection, _ = train_stage2(new, stage1.projection, images, captions, Stage2Config(seed=seed, **options),
                                               old_image_embeddings=old_vectors, verbose=False)
            adapters[f"seed{seed} | {name}"] = Adapter(new, projection, lora=lora)
            print(f"seed {seed}: {name} ({time.perf_counter() - start:.0f}s)", flush=True)
    report = xbt.evaluate(old, adapters, dataset="toy", verbose=False, query_cost=False)
    r1 = {n: {d: round(100 * m.recall[d][1], 2) for d in ("i2t", "t2i")} for n, m in report.methods.items()}
    summary = {}
    print(f"\nold->old R@1 I2T / T2I: {100 * report.old_old['i2t'][1]:.2f} / {100 * report.old_old['t2i'][1]:.2f}")
    print("| setting | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean |")
    print("|---|" + "---|" * (len(args.seeds) + 1))
    for name in ["stage 1", *SETTINGS]:
        rows = [r1[f"seed{s} | {name}"] for s in args.seeds]
        mean = {d: round(sum(r[d] for r in rows) / len(rows), 2) for d in ("i2t", "t2i")}
        summary[name] = {"per_seed": rows, "mean": mean}
        cells = " | ".join(f"{r['i2t']:.1f} / {r['t2i']:.2f}" for r in rows)
        print(f"| {name} | {cells} | {mean['i2t']:.2f} / {mean['t2i']:.2f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"r1": r1, "summary": summary, "wall_seconds": round(time.perf_counter() - start, 1)}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

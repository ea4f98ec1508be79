"""Stage-2 benchmarks on the toy world: pair efficiency, stage 1 vs 1+2, and the cost of serving.

    python scripts/bench_stage2.py --out benchmarks/out/stage2.json

1. Pair efficiency: new->old R@1 (both directions) for 0 / 250 / 1,000 / 2,000 pairs,
   with stage 1 (text-only pretraining, then stage 2) and without it (projection started at
   Procrustes on the OLD gallery vectors of the pair images, then stage 2 with those vectors:
   without stage 1 nothing else links the new model to the old space). "with stage 1" is run
   both without and with the old gallery vectors of the pair images.
2. Serving cost: time to encode the same queries with the bare new model, the unmerged LoRA
   adapter, the merged adapter and the stage-1 adapter (same projection, no LoRA), interleaved in
   one run; reported as ratios to the bare new model.
3. Merge check: max |merged - unmerged| over the test queries.

Prints a table, writes JSON (and a PNG of the pair-efficiency curves next to it).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import xbt  # noqa: E402
from xbt import toy  # noqa: E402
from xbt.embed import embed_images  # noqa: E402
from xbt.pairs import as_pairs  # noqa: E402


def r1(report, name: str) -> dict[str, float]:
    rec = report.methods[name].recall
    return {"i2t": round(100 * rec["i2t"][1], 2), "t2i": round(100 * rec["t2i"][1], 2)}


def time_queries(encoders: dict, texts, images, repeats: int = 5) -> dict[str, float]:
    """Best-of-``repeats`` seconds for each encoder to encode ``texts`` and ``images``.

    ``encoders`` maps a name to ``(encode_text, encode_image)``. The rounds are interleaved (every
    encoder once per round) so that a slow moment of the machine hits all of them alike.
    """
    best = {name: float("inf") for name in encoders}
    for _ in range(repeats):
        for name, (encode_text, encode_image) in encoders.items():
            t0 = time.perf_counter()
            for s in range(0, len(texts), 256):
                encode_text(texts[s : s + 256])
            for s in range(0, len(images), 128):
                encode_image(images[s : s + 128])
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "stage2.json")
    parser.add_argument("--pairs", type=int, nargs="+", default=[0, 250, 1000, 2000])
    parser.add_argument("--texts", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    start = time.perf_counter()
    old, new = toy.load_clips()
    texts = toy.text_corpus(args.texts)
    all_pairs = toy.pair_list(max(args.pairs))
    images_all, _ = as_pairs(all_pairs)
    old_img_all = embed_images(old, images_all, verbose=False)

    adapters = {}
    for n in args.pairs:
        if n == 0:
            adapters["stage1 | 0"] = xbt.fit(old, new, texts, seed=args.seed, verbose=False)
            continue
        pairs = all_pairs[:n]
        adapters[f"stage1+2 | {n}"] = xbt.fit(old, new, texts, pairs=pairs, seed=args.seed, verbose=False)
        adapters[f"stage1+2+oldimg | {n}"] = xbt.fit(
            old, new, texts, pairs=pairs, old_image_embeddings=old_img_all[:n], seed=args.seed, verbose=False)
        adapters[f"stage2 only+oldimg | {n}"] = xbt.fit(
            old, new, texts, pairs=pairs, old_image_embeddings=old_img_all[:n], use_stage1=False, seed=args.seed, verbose=False)
        print(f"fitted the {n}-pair adapters ({time.perf_counter() - start:.0f}s)", flush=True)
    report = xbt.evaluate(old, adapters, dataset="toy", verbose=False)

    table = {name: r1(report, name) for name in adapters}
    rows = {"old->old": {d: round(100 * report.old_old[d][1], 2) for d in ("i2t", "t2i")},
            "new->new": {d: round(100 * report.new_new[d][1], 2) for d in ("i2t", "t2i")}}
    efficiency: dict[str, dict[str, dict[str, float] | None]] = {}
    for variant in ("stage1+2", "stage1+2+oldimg", "stage2 only+oldimg"):
        efficiency[variant] = {}
        for n in args.pairs:
            key = "stage1 | 0" if n == 0 and variant != "stage2 only+oldimg" else f"{variant} | {n}"
            efficiency[variant][str(n)] = table.get(key)

    # Serving cost, one run: bare new model vs unmerged LoRA vs merged.
    biggest = f"stage1+2 | {max(args.pairs)}"
    result = {"old_new_r1": rows, "pair_efficiency_r1": efficiency, "all_r1": table}
    if biggest in adapters:
        adapter = adapters[biggest]
        q_texts, q_images = [c for cs in toy.test_split()[1][:200] for c in cs], toy.test_split(200)[0]
        unmerged_t = adapter.encode_text(q_texts[:50])
        unmerged_i = adapter.encode_image(q_images[:50])
        merged = copy.deepcopy(adapter).merge()
        encoders = {"bare_new": (new.encode_text, new.encode_image),
                    "unmerged": (adapter.encode_text, adapter.encode_image),
                    "merged": (merged.encode_text, merged.encode_image)}
        if "stage1 | 0" in adapters:  # the same projection without LoRA: what merging leaves to pay
            encoders["stage1_projection_only"] = (adapters["stage1 | 0"].encode_text, adapters["stage1 | 0"].encode_image)
        seconds = time_queries(encoders, q_texts, q_images)
        diff = max((merged.encode_text(q_texts[:50]) - unmerged_t).abs().max().item(),
                   (merged.encode_image(q_images[:50]) - unmerged_i).abs().max().item())
        result["serving"] = {
            "queries": {"texts": len(q_texts), "images": len(q_images)},
            "seconds": {name: round(t, 4) for name, t in seconds.items()},
            "ratio_to_bare_new": {name: round(t / seconds["bare_new"], 3) for name, t in seconds.items() if name != "bare_new"},
            "max_abs_diff_merged_vs_unmerged": diff,
        }
    result["wall_seconds"] = round(time.perf_counter() - start, 1)

    print(f"\nold->old R@1 i2t/t2i: {rows['old->old']}   new->new: {rows['new->new']}")
    print("pair efficiency, new->old R@1 (i2t / t2i):")
    print("| pairs | " + " | ".join(efficiency) + " |")
    print("|---|" + "---|" * len(efficiency))
    for n in args.pairs:
        cells = []
        for variant in efficiency:
            v = efficiency[variant][str(n)]
            cells.append("—" if v is None else f"{v['i2t']:.1f} / {v['t2i']:.1f}")
        print(f"| {n} | " + " | ".join(cells) + " |")
    if "serving" in result:
        print(f"serving cost vs bare new model: {result['serving']['ratio_to_bare_new']}, "
              f"max |merged-unmerged| = {result['serving']['max_abs_diff_merged_vs_unmerged']:.2e}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    _plot(efficiency, rows, args.pairs, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')} in {result['wall_seconds']:.0f}s")


def _plot(efficiency, rows, ns, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, direction, title in zip(axes, ("i2t", "t2i"), ("image→text", "text→image")):
        for variant, points in efficiency.items():
            xs = [n for n in ns if points[str(n)] is not None]
            ax.plot(xs, [points[str(n)][direction] for n in xs], marker="o", label=f"new→old {variant}")
        ax.axhline(rows["old->old"][direction], color="gray", ls="--", label="old→old")
        ax.axhline(rows["new->new"][direction], color="black", ls=":", label="new→new")
        ax.set_title(f"toy world, {title} R@1")
        ax.set_xlabel("image–caption pairs")
        ax.set_ylabel("R@1 (%)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()

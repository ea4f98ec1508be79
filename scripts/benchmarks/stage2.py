"""Stage-2 benchmarks on both toy worlds: pair efficiency and the cost of serving.

    python -m scripts.benchmarks.stage2                       # both worlds, seed 0
    python -m scripts.benchmarks.stage2 --worlds shapes --seed 1

1. Pair efficiency: new->old R@1 (both directions) of plain ``xbt.fit(old, new, texts, pairs=...)``
   for 0 / 250 / 1,000 / 2,000 pairs (0 = stage 1 alone; one stage 1 per world, reused through
   ``fit(stage1=...)``), with SLERP (alpha chosen on the same pairs) at each pair count beside it,
   and what each query path kept. Whether stage 2 ever falls below stage 1 is printed per point.
2. Serving cost (first world): time to encode the same queries with the bare new model, the
   unmerged adapter, the merged adapter and the stage-1 adapter, interleaved in one run, as
   ratios to the bare new model; and max |merged - unmerged|.

Prints tables, writes JSON and a PNG of the curves (``--out``).
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

import xbt
from scripts.benchmarks.ceiling import read_ceiling
from xbt import toy
from xbt.core.files import atomic_path, write_json
from xbt.toy.worlds import load_toy

ROOT = Path(__file__).resolve().parents[2]

DIRS = ("i2t", "t2i")


def time_queries(encoders: dict, texts, images, repeats: int = 5) -> dict[str, float]:
    """Best-of-``repeats`` seconds for each encoder (name -> (encode_text, encode_image)), rounds interleaved."""
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


def efficiency(name: str, counts, seed: int, n_texts: int) -> tuple[dict, dict]:
    world = toy.get_world(name)
    old, new = world.load_clips()
    texts = world.text_corpus(n_texts)
    stage1 = xbt.fit(old, new, texts, seed=seed, verbose=False)
    adapters, kept = {"0": stage1}, {}
    for n in counts:
        if n == 0:
            continue
        pairs = world.pairs(n)
        t0 = time.perf_counter()
        adapters[str(n)] = xbt.fit(old, new, texts, pairs=pairs, seed=seed, stage1=stage1, verbose=False)
        kept[str(n)] = {m: adapters[str(n)].training["kept"][m]["kept"] for m in ("text", "image")}
        adapters[f"slerp {n}"] = xbt.fit(old, new, texts, pairs=pairs, method="slerp", verbose=False)
        print(f"[{name}] {n} pairs: fitted in {time.perf_counter() - t0:.0f}s, kept {kept[str(n)]}", flush=True)
    report = xbt.evaluate(
        old, adapters, dataset=load_toy(world=name), query_cost=False, verbose=False, ceiling=read_ceiling(name)
    )
    r1 = lambda rec: {d: round(100 * rec[d][1], 2) for d in DIRS}  # noqa: E731
    points = {}
    for n in counts:
        row = {"xbt": r1(report.methods[str(n)].recall), "kept": kept.get(str(n))}
        if n:
            row["slerp"] = r1(report.methods[f"slerp {n}"].recall)
        row["vs_stage1"] = {d: round(row["xbt"][d] - r1(report.methods["0"].recall)[d], 2) for d in DIRS}
        points[str(n)] = row
    ref = {
        "old_old": r1(report.old_old),
        "new_new": r1(report.new_new),
        "ceiling": None if report.ceiling is None else r1(report.ceiling),
    }
    return {"world": name, "seed": seed, "points": points, **ref}, {
        "old": old,
        "new": new,
        "world": world,
        "adapters": adapters,
    }


def serving(ctx: dict, n_pairs: str) -> dict:
    adapter, stage1, new = ctx["adapters"][n_pairs], ctx["adapters"]["0"], ctx["new"]
    images, captions = ctx["world"].test_split(200)
    texts = [c for cs in captions for c in cs]
    unmerged_t, unmerged_i = adapter.encode_text(texts[:50]), adapter.encode_image(images[:50])
    merged = copy.deepcopy(adapter).merge()
    encoders = {
        "bare_new": (new.encode_text, new.encode_image),
        "unmerged": (adapter.encode_text, adapter.encode_image),
        "merged": (merged.encode_text, merged.encode_image),
        "stage1": (stage1.encode_text, stage1.encode_image),
    }
    seconds = time_queries(encoders, texts, images)
    diff = max(
        (merged.encode_text(texts[:50]) - unmerged_t).abs().max().item(),
        (merged.encode_image(images[:50]) - unmerged_i).abs().max().item(),
    )
    return {
        "queries": {"texts": len(texts), "images": len(images)},
        "seconds": {k: round(v, 4) for k, v in seconds.items()},
        "ratio_to_bare_new": {k: round(v / seconds["bare_new"], 3) for k, v in seconds.items() if k != "bare_new"},
        "max_abs_diff_merged_vs_unmerged": diff,
    }


def plot(results: list[dict], counts, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.6 * len(results)), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(results), 2, squeeze=False)
    for row, res in zip(axes, results):
        for ax, d, title in zip(row, DIRS, ("image→text", "text→image")):
            ax.plot(counts, [res["points"][str(n)]["xbt"][d] for n in counts], marker="o", label="new→old XBT")
            xs = [n for n in counts if n]
            ax.plot(xs, [res["points"][str(n)]["slerp"][d] for n in xs], marker="s", label="new→old SLERP")
            ax.axhline(res["old_old"][d], color="gray", ls="--", label="old→old")
            if res["ceiling"]:
                ax.axhline(res["ceiling"][d], color="green", ls="-.", label="ceiling (frozen old gallery)")
            ax.set_title(f"{res['world']}: {title} R@1")
            ax.set_xlabel("image–caption pairs")
            ax.set_ylabel("R@1 (%)")
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worlds", nargs="+", default=["shapes", "patterns"])
    parser.add_argument("--pairs", type=int, nargs="+", default=[0, 250, 1000, 2000])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--texts", type=int, default=50_000)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "stage2.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    start = time.perf_counter()
    results, first = [], None
    for name in args.worlds:
        res, ctx = efficiency(name, args.pairs, args.seed, args.texts)
        results.append(res)
        first = first or ctx
    out = {"pair_efficiency": results}
    if max(args.pairs) > 0:
        out["serving"] = {"world": args.worlds[0], **serving(first, str(max(args.pairs)))}
    for res in results:
        fmt = lambda r: f"{r['i2t']:.2f} / {r['t2i']:.2f}"  # noqa: E731
        print(
            f"\n## {res['world']} (seed {res['seed']}): R@1 I2T / T2I; old→old {fmt(res['old_old'])}, "
            f"ceiling {fmt(res['ceiling']) if res['ceiling'] else '–'}, new→new {fmt(res['new_new'])}"
        )
        print("| pairs | XBT (stage 1 + 2) | vs stage 1 | SLERP | kept (text / image) |")
        print("|---|---|---|---|---|")
        for n in args.pairs:
            p = res["points"][str(n)]
            kept = "stage 1 alone" if not n else f"{p['kept']['text']} / {p['kept']['image']}"
            print(
                f"| {n} | {fmt(p['xbt'])} | {p['vs_stage1']['i2t']:+.2f} / {p['vs_stage1']['t2i']:+.2f} | "
                f"{fmt(p['slerp']) if n else '–'} | {kept} |"
            )
    if "serving" in out:
        s = out["serving"]
        print(
            f"\nserving cost ({s['world']}), ratio to the bare new model: {s['ratio_to_bare_new']}; "
            f"max |merged − unmerged| = {s['max_abs_diff_merged_vs_unmerged']:.2e}"
        )
    out["wall_seconds"] = round(time.perf_counter() - start, 1)
    write_json(args.out, out)
    plot(results, args.pairs, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')} ({out['wall_seconds']:.0f}s)")


if __name__ == "__main__":
    main()

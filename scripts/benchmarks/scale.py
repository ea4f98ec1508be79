"""Stage 1 out of core, and exact search in blocks at full-protocol size: peak memory and time.

``stage1`` part: ``xbt.fit(old, new, <lazy caption stream of N texts>, epochs=1)`` on the toy
models for each corpus size (default 100k, 1M and 3M generated captions), each in a fresh process
(``--one``) so its peak RSS (``resource.getrusage``, ``ru_maxrss``) is its own; a fresh embedding
cache per size, so every distinct text is embedded. Reported per size: texts read, distinct texts
(the stream drops repeats), wall time, texts per second (read and distinct), peak RSS and the RSS
after loading the models (the floor). Acceptance: peak RSS at the largest size within 1.2x of the
smallest, time per distinct text within 1.3x.

``search`` part: a synthetic gallery of ``--images`` (default 31,000) unit vectors with 5 noisy
captions each (155,000), 512-d, written as .npy files by a separate process and memory-mapped. Each
method runs both directions in a fresh process, one after the other in one run: ``product`` (the
bare image x caption matrix product in the same blocks, top-k of nothing: the yardstick), ``scan``
(``xbt.evaluation.search.cross_recall``: both directions from one product per block, what
``xbt.evaluate`` runs for old->old and new->new), ``block`` (``recall_at_k(..., index="block")``, one
direction at a time in bounded memory) and ``faiss`` (the default ``index="flat"``: FAISS over the
whole gallery, which it first copies into memory). Time, peak RSS, Recall@K, each time over the
product's, and how many queries' first-hit ranks differ from FAISS flat's.

Each size writes ``<out-dir>/<part>-<size>.json``; the table (printed) and ``<out-dir>/bench_scale.json``
gather every result in the folder, so sizes may run as separate processes (e.g. 3M under ``nohup``).

    python -m scripts.benchmarks.scale stage1 [--sizes 100000 1000000 3000000] [--threads 1] [--world toy]
    python -m scripts.benchmarks.scale search [--images 31000] [--dim 512]
    python -m scripts.benchmarks.scale table
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OUT_DIR = Path("benchmarks/out/bench_scale")


def rss_mb() -> float:
    """This process's peak resident set so far, MB (Linux reports ru_maxrss in KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def lazy_corpus(world_name: str, n: int):
    """A generator of the world's first ``n`` stage-1 captions (the same texts as ``text_corpus(n)``)."""
    from xbt import toy

    world = toy.get_world(world_name) if world_name != "toy" and hasattr(toy, "get_world") else toy
    gen = getattr(world, "iter_text_corpus", None)
    return (gen(n) if gen is not None else iter(world.text_corpus(n))), world


def one_stage1(n: int, world_name: str, threads: int) -> dict:
    import torch

    import xbt

    torch.set_num_threads(threads)
    texts, world = lazy_corpus(world_name, n)
    old, new = world.load_clips()
    floor = rss_mb()
    with tempfile.TemporaryDirectory(prefix="xbt-bench-scale-") as cache:
        t0 = time.perf_counter()
        adapter = xbt.fit(old, new, texts, epochs=1, cache=cache, verbose=False)
        wall = time.perf_counter() - t0
    hist = adapter.training["metrics"]["stage1"]
    distinct = adapter.training["n_texts"]
    res = {
        "part": "stage1",
        "world": world_name,
        "n_texts": n,
        "n_distinct": distinct,
        "wall_s": round(wall, 1),
        "texts_per_s": round(n / wall, 1),
        "distinct_per_s": round(distinct / wall, 1),
        "us_per_distinct": round(1e6 * wall / distinct, 1),
        "peak_rss_mb": round(rss_mb(), 1),
        "rss_after_models_mb": round(floor, 1),
        "n_val": hist["n_val"],
        "val_cosine": round(hist["best_val_cosine"], 4),
        "threads": threads,
    }
    return res


def make_gallery(n_images: int, dim: int, per_image: int, folder: Path) -> None:
    """Write the synthetic gallery: unit image vectors and ``per_image`` noisy unit captions each (.npy, float32)."""
    import numpy as np

    rng = np.random.default_rng(0)
    img = rng.standard_normal((n_images, dim), dtype=np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    np.save(folder / "images.npy", img)
    cap = np.repeat(img, per_image, axis=0)
    cap += rng.standard_normal(cap.shape, dtype=np.float32) * np.float32(
        4.0 / np.sqrt(dim)
    )  # noise of norm 4: R@1 far from 0 and 1
    cap /= np.linalg.norm(cap, axis=1, keepdims=True)
    np.save(folder / "captions.npy", cap)


def one_search(method: str, folder: Path, per_image: int) -> dict:
    """Both directions with ``method`` over the memory-mapped gallery files; first hits saved for the comparison."""
    import numpy as np

    from xbt.evaluation.search import cross_recall, recall_at_k

    img, cap = np.load(folder / "images.npy", mmap_mode="r"), np.load(folder / "captions.npy", mmap_mode="r")
    owner, ids = np.repeat(np.arange(len(img)), per_image), np.arange(len(img))
    floor = rss_mb()
    if method == "product":  # the bare matrix product of the same sizes, in the scan's blocks: the yardstick
        return {"part": "search", "method": method, **bare_product(img, cap), "peak_rss_mb": round(rss_mb(), 1)}
    product = bare_product(img, cap)["wall_s"] if method in ("scan", "block") else None  # the same process's yardstick
    t0 = time.perf_counter()
    if method == "scan":  # both directions from one product per block
        i2t, t2i = cross_recall(img, cap, ids, owner, (1, 5, 10))
        t_i2t = None
    else:
        i2t = recall_at_k(img, cap, ids, owner, (1, 5, 10), index="block" if method == "block" else "flat")
        t_i2t = time.perf_counter() - t0
        t2i = recall_at_k(cap, img, owner, ids, (1, 5, 10), index="block" if method == "block" else "flat")
    wall = time.perf_counter() - t0
    np.save(folder / f"first-{method}-i2t.npy", i2t.first_hit)
    np.save(folder / f"first-{method}-t2i.npy", t2i.first_hit)
    return {
        "part": "search",
        "method": method,
        "images": len(img),
        "captions": len(cap),
        "dim": img.shape[1],
        "wall_s": round(wall, 1),
        "i2t_s": None if t_i2t is None else round(t_i2t, 1),
        "product_s": product,
        "over_product": None if product is None else round(wall / product, 2),
        "peak_rss_mb": round(rss_mb(), 1),
        "rss_before_mb": round(floor, 1),
        "gallery_files_mb": round((img.nbytes + cap.nbytes) / 2**20, 1),
        "recall_i2t": {k: round(v, 5) for k, v in i2t.recall.items()},
        "recall_t2i": {k: round(v, 5) for k, v in t2i.recall.items()},
    }


def bare_product(img, cap) -> dict:
    """Time ``img @ cap.T`` block by block (the scan's blocks, float32 BLAS), keeping nothing of it."""
    import torch

    from xbt.evaluation.scan import read_rows

    t0 = time.perf_counter()
    for i0 in range(0, len(img), 4096):
        a = torch.from_numpy(read_rows(img, i0, 4096, "images"))
        for j0 in range(0, len(cap), 16_384):
            (a @ torch.from_numpy(read_rows(cap, j0, 16_384, "captions")).T).max()  # noqa: B018 (the work timed)
    wall = time.perf_counter() - t0
    flops = 2 * len(img) * len(cap) * img.shape[1]
    return {
        "images": len(img),
        "captions": len(cap),
        "dim": img.shape[1],
        "wall_s": round(wall, 1),
        "gflops": round(flops / wall / 1e9, 1),
    }


def table(out_dir: Path) -> dict:
    rows = [json.loads(p.read_text()) for p in sorted(out_dir.glob("*-*.json"))]
    s1 = sorted([r for r in rows if r["part"] == "stage1"], key=lambda r: r["n_texts"])
    se = [r for r in rows if r["part"] == "search"]
    print(
        "| texts read | distinct | wall (s) | texts/s | distinct/s | us/distinct | peak RSS (MB) | RSS after models "
        "(MB) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in s1:
        print(
            f"| {r['n_texts']:,} | {r['n_distinct']:,} | {r['wall_s']} | {r['texts_per_s']:,.0f} | "
            f"{r['distinct_per_s']:,.0f} "
            f"| {r['us_per_distinct']} | {r['peak_rss_mb']:,.0f} | {r['rss_after_models_mb']:,.0f} |"
        )
    summary: dict = {"stage1": s1, "search": se, "machine": {"platform": platform.platform(), "cpus": os.cpu_count()}}
    if len(s1) >= 2:
        lo, hi = s1[0], s1[-1]
        summary["rss_ratio_largest_vs_smallest"] = round(hi["peak_rss_mb"] / lo["peak_rss_mb"], 3)
        summary["time_per_distinct_ratio_max_over_min"] = round(
            max(r["us_per_distinct"] for r in s1) / min(r["us_per_distinct"] for r in s1), 3
        )
        per_text = [1e6 * r["wall_s"] / r["n_texts"] for r in s1]
        summary["time_per_text_ratio_max_over_min"] = round(max(per_text) / min(per_text), 3)
        print(
            f"peak RSS {hi['n_texts']:,} / {lo['n_texts']:,}: {summary['rss_ratio_largest_vs_smallest']}x (target <= "
            "1.2); "
            f"time per text read max/min: {summary['time_per_text_ratio_max_over_min']}x, per distinct text: "
            f"{summary['time_per_distinct_ratio_max_over_min']}x (target <= 1.3)"
        )
    if se:
        print(
            "\n| search | images x captions | wall (s) | peak RSS (MB) | R@1 I2T | R@1 T2I "
            "|\n|---|---|---:|---:|---:|---:|"
        )
        for r in se:
            recall = (
                f"{100 * r['recall_i2t']['1']:.2f} | {100 * r['recall_t2i']['1']:.2f}"
                if "recall_i2t" in r
                else "– | –"
            )
            print(
                f"| {r['method']} | {r['images']:,} x {r['captions']:,} | {r['wall_s']} | {r['peak_rss_mb']:,.0f} "
                f"| {recall} |"
            )
        data = out_dir / "search-data"
        others = [r["method"] for r in se if r["method"] not in ("faiss", "product")]
        if (data / "first-faiss-i2t.npy").is_file():
            import numpy as np

            diff = {
                m: {
                    d: int((np.load(data / f"first-{m}-{d}.npy") != np.load(data / f"first-faiss-{d}.npy")).sum())
                    for d in ("i2t", "t2i")
                }
                for m in others
                if (data / f"first-{m}-t2i.npy").is_file()
            }
            summary["search_queries_with_another_first_hit"] = diff
            print(f"queries whose first-hit rank differs from the FAISS flat search's: {diff}")
        paired = {r["method"]: r["over_product"] for r in se if r.get("over_product") is not None}
        if paired:  # each measured against a bare product timed just before it in its own process
            summary["search_time_over_bare_product"] = paired
            print(f"search time / bare product time, both directions, timed side by side in one process: {paired}")
    out = out_dir / "bench_scale.json"
    out.write_text(json.dumps(summary, indent=2))
    print(f"wrote {out}")
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("part", choices=("stage1", "search", "table"))
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 3_000_000])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--world", default="toy")
    ap.add_argument("--images", type=int, default=31_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--methods", nargs="+", default=["product", "scan", "block", "faiss"])
    ap.add_argument("--out-dir", type=Path, default=OUT_DIR)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    data = args.out_dir / "search-data"
    if args.one:  # inside the fresh process of one measurement
        if args.one == "gallery":
            data.mkdir(exist_ok=True)
            return make_gallery(args.images, args.dim, 5, data)
        res = (
            one_stage1(int(args.one), args.world, args.threads)
            if args.part == "stage1"
            else one_search(args.one, data, 5)
        )
        name = f"stage1-{args.world}-{int(args.one)}" if args.part == "stage1" else f"search-{args.one}-{args.images}"
        (args.out_dir / f"{name}.json").write_text(json.dumps(res, indent=2))
        print(json.dumps(res))
        return
    if args.part != "table":
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        for item in args.sizes if args.part == "stage1" else ["gallery", *args.methods]:
            cmd = [
                sys.executable,
                __file__,
                args.part,
                "--one",
                str(item),
                "--threads",
                str(args.threads),
                "--world",
                args.world,
                "--images",
                str(args.images),
                "--dim",
                str(args.dim),
                "--out-dir",
                str(args.out_dir),
            ]
            subprocess.run(cmd, check=True, env=env)
    table(args.out_dir)


if __name__ == "__main__":
    main()

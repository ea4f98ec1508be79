"""Items per second of the Ray engine against the single-process backfill, side by side, on this machine.

    python -m scripts.benchmarks.cluster                       # 2,000 toy images, batches of 256, 3 rounds
    python -m scripts.benchmarks.cluster --items 1000 --rounds 1

Builds a toy image gallery (the 2,000 pair images, repeated past that) with the OLD model, then backfills all
of it with the NEW model, in rounds whose
order alternates: ``gallery.BackfillJob`` (one process, batch files in the folder) and ``cluster.RayBackfill``
on a local Ray (``--workers`` actors, one CPU each; a LanceDB table version per batch). Each run starts from
nothing; the Ray figures are given with the start of Ray itself (``ray.init``, once per process, the first
round) and without it. Checks that both write the same vectors (max abs difference, and the first rows equal
to a fresh embedding). Prints a table and writes JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from xbt.adapters.config import ModelRef
from xbt.cluster import RayBackfill, open_lance_gallery
from xbt.core.files import write_json
from xbt.gallery import BackfillJob, MixedGallery, open_gallery
from xbt.models.embedding import embed_images
from xbt.toy import load_clips
from xbt.toy.splits import pairs as toy_pairs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--items", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default="benchmarks/out/cluster")
    args = p.parse_args()
    import ray

    torch.set_num_threads(1)  # each engine embeds on one thread per process: the Ray workers get one core each
    old, new = load_clips(device="cpu")
    base = [row["image"] for row in toy_pairs(min(args.items, 2000))]  # the toy pair set holds 2,000 images
    images = [base[i % len(base)] for i in range(args.items)]  # larger galleries repeat them
    work = Path(tempfile.mkdtemp(prefix="xbt-cluster-bench-"))
    g = MixedGallery(ModelRef.of(old), new.embed_dim, "image")
    g.add_old(embed_images(old, images, verbose=False), items=images)
    g.save(work / "gallery")
    t0 = time.perf_counter()
    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - t0
    runs: dict[str, list[float]] = {"single": [], "ray": []}
    commits: list[float] = []
    vectors = {}
    for r in range(args.rounds):
        for engine in ("single", "ray") if r % 2 == 0 else ("ray", "single"):
            folder = work / f"{engine}-{r}"
            shutil.copytree(work / "gallery", folder)
            t = time.perf_counter()
            if engine == "single":
                BackfillJob(folder, new, images, batch_size=args.batch_size).run(verbose=False)
            else:
                job = RayBackfill(
                    folder, new, images, folder / "lancedb", batch_size=args.batch_size, workers=args.workers
                )
                commits.append(job.run(verbose=False)["commit_seconds"])
            runs[engine].append(time.perf_counter() - t)
            opened = open_gallery(folder) if engine == "single" else open_lance_gallery(folder, folder / "lancedb")
            vectors[engine] = opened.store.vectors("new", np.arange(len(images)))
            print(f"round {r} {engine}: {runs[engine][-1]:.1f} s", flush=True)
    ray.shutdown()
    fresh = embed_images(new, images[:64], verbose=False).numpy()
    same = float(np.abs(vectors["single"] - vectors["ray"]).max())
    med = {k: statistics.median(v) for k, v in runs.items()}
    result = {
        "items": args.items,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "seconds": runs,
        "median_seconds": med,
        "ray_init_seconds": round(ray_start, 2),
        "items_per_second": {k: round(args.items / v, 1) for k, v in med.items()},
        "ray_items_per_second_with_init": round(args.items / (med["ray"] + ray_start), 1),
        "ray_over_single_time": round(med["ray"] / med["single"], 3),
        "ray_lancedb_commit_seconds": commits,
        "max_abs_difference_ray_vs_single": same,
        "max_abs_difference_vs_fresh_embedding": float(np.abs(vectors["ray"][:64] - fresh).max()),
    }
    print(
        f"\n| engine | median s ({args.rounds} rounds) | items/s |\n|---|---|---|\n"
        f"| single process (BackfillJob) | {med['single']:.1f} | {result['items_per_second']['single']} |\n"
        f"| Ray Data, {args.workers} actors, LanceDB | {med['ray']:.1f} | {result['items_per_second']['ray']} "
        f"({result['ray_items_per_second_with_init']} with ray.init, {ray_start:.1f} s) |\n"
        f"Ray ÷ single time: {result['ray_over_single_time']} (of the Ray time, LanceDB commits on the driver: "
        f"{statistics.median(commits):.1f} s); same vectors: max |difference| {same:.2e}"
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "cluster.json", result)
    print(f"wrote {out / 'cluster.json'}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The three migration stores side by side: FAISS, embedded Qdrant and LanceDB, on the same vectors.

    python -m scripts.benchmarks.stores                        # 20,000 items, 512-d old / 768-d new
    python -m scripts.benchmarks.stores --items 5000 --queries 200

Random unit vectors at real widths; each store gets every item's OLD vector, then NEW vectors for half of them
in batches of ``--batch`` (the backfill's writes; for LanceDB each batch one table version), then ``--queries``
queries search each space for the top 10. Times each step per store, in one process, and counts the queries
whose top-10 ids differ from FAISS's (with the largest score difference among them: a near-tie or a miss).
Prints a table and writes JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from xbt.core.files import write_json
from xbt.vectordb import make_store


def unit(rng, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--items", type=int, default=20_000)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--d-old", type=int, default=512)
    p.add_argument("--d-new", type=int, default=768)
    p.add_argument("--out", default="benchmarks/out/stores")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    old, new = unit(rng, args.items, args.d_old), unit(rng, args.items, args.d_new)
    q_old, q_new = unit(rng, args.queries, args.d_old), unit(rng, args.queries, args.d_new)
    half = rng.permutation(args.items)[: args.items // 2]
    results, reference = {}, {}
    for kind in ("faiss", "qdrant", "lancedb"):
        with tempfile.TemporaryDirectory() as tmp:
            path = None if kind == "faiss" else str(Path(tmp) / kind)
            t = {}
            t0 = time.perf_counter()
            store = make_store(kind, args.d_old, args.d_new, path)
            store.add_old(old)
            t["add old vectors"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            for s in range(0, len(half), args.batch):
                ids = half[s : s + args.batch]
                store.set_new(ids, new[ids])
            t["set new vectors (half, in batches)"] = time.perf_counter() - t0
            found, scores = {}, {}
            for space, q in (("old", q_old), ("new", q_new)):
                t0 = time.perf_counter()
                scores[space], found[space] = store.search(space, q, 10)
                t[f"search {space} space, {args.queries} queries"] = time.perf_counter() - t0
            if kind == "faiss":
                reference = {"ids": found, "scores": scores}
            differ = {sp: np.flatnonzero((found[sp] != reference["ids"][sp]).any(1)) for sp in found}
            # where the lists differ, how far apart are the scores FAISS gives the items they disagree on?
            gaps = [
                float(np.abs(np.sort(scores[sp][i]) - np.sort(reference["scores"][sp][i])).max())
                for sp in found
                for i in differ[sp]
            ]
            same = sum(len(d) for d in differ.values())
            results[kind] = {
                "seconds": {k: round(v, 3) for k, v in t.items()},
                "queries_whose_top10_differs_from_faiss": same,
                "largest_score_difference_where_they_differ": max(gaps, default=0.0),
            }
            print(
                f"{kind}: "
                + ", ".join(f"{k} {v:.2f} s" for k, v in t.items())
                + f"; top-10 unlike FAISS's for {same} "
                f"of {2 * args.queries} queries (largest score difference there {max(gaps, default=0.0):.1e})"
            )
    steps = list(results["faiss"]["seconds"])
    print("\n| step | " + " | ".join(results) + " |\n|---" * 1 + "|---" * len(results) + "|")
    for step in steps:
        print(f"| {step} | " + " | ".join(f"{results[k]['seconds'][step]:.2f} s" for k in results) + " |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "stores.json", {"args": vars(args), "results": results})
    print(f"wrote {out / 'stores.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The three migration stores side by side: FAISS, embedded Qdrant and LanceDB, on the same vectors.

    python -m scripts.benchmarks.stores                        # 20,000 items, 512-d old / 768-d new
    python -m scripts.benchmarks.stores --items 5000 --queries 200

Random unit vectors at real widths; each store gets every item's OLD vector, then NEW vectors for half of them
in batches of ``--batch`` (the backfill's writes; for LanceDB each batch one table version), then ``--queries``
queries search each space for the top 10. Times each step per store, in one process, and checks every store
returns FAISS's top-10 ids. Prints a table and writes JSON to ``--out``.
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
            found = {}
            for space, q in (("old", q_old), ("new", q_new)):
                t0 = time.perf_counter()
                found[space] = store.search(space, q, 10)[1]
                t[f"search {space} space, {args.queries} queries"] = time.perf_counter() - t0
            if kind == "faiss":
                reference = found
            same = all(np.array_equal(found[s], reference[s]) for s in found)
            results[kind] = {"seconds": {k: round(v, 3) for k, v in t.items()}, "same_top10_as_faiss": same}
            print(f"{kind}: " + ", ".join(f"{k} {v:.2f} s" for k, v in t.items()) + f"; same top-10 as FAISS: {same}")
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

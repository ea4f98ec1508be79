"""What a merged stage-2 query costs against the bare NEW model, side by side in one run, on each compatible world.

    python -m scripts.benchmarks.query_cost                 # writes benchmarks/out/query_cost.json
    python -m scripts.benchmarks.query_cost --worlds shapes --repeats 50
    python -m scripts.benchmarks.query_cost --real ViT-B-16 ViT-B-32 --worlds   # a real-size pair only

For each world: ``xbt.fit(old, new, texts, pairs=pairs)`` with the defaults (2,000 texts and 200 pairs are
enough: the cost does not depend on what the heads learned), ``adapter.merge()``, then ``--repeats`` rounds
of one bare ``new.encode_text`` / ``encode_image`` call and one adapter call on the same inputs (raw strings
/ PIL images in, so tokenisation and preprocessing count), at batch 1 and 32, after a warm-up; which of the
two runs first alternates between rounds. Pairing keeps a shared machine's load changes out of the ratio;
the figure is the median of the per-round ratios. Prints a table and writes JSON.

``--real NEW OLD`` adds a pair of open_clip architectures at their real size, built offline with random
weights, and an adapter with the default stage-2 heads on them (one residual-MLP head per query modality,
hidden 1,024: what a merged frozen-tower adapter runs; the cost does not depend on the weights). The toy
towers take 1-27 ms a call, so there the head and the adapter's per-call work weigh; at real size the
towers' matrix work dominates.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

import xbt
from xbt.core.files import write_json
from xbt.evaluation.evaluate import paired_rounds

ROOT = Path(__file__).resolve().parents[2]


def measure(world_name: str, repeats: int, batches=(1, 32)) -> dict:
    world = xbt.toy.get_world(world_name)
    old, new = world.load_clips()
    adapter = xbt.fit(old, new, world.text_corpus(2000), pairs=world.pairs(200), verbose=False).merge()
    images, captions = world.test_split(max(batches))
    texts = [c[0] for c in captions]
    return _ratios(world_name, new, adapter, texts, images, repeats, {"text": batches, "image": batches})


def measure_real(new_name: str, old_name: str, repeats: int, batches=(1, 32)) -> dict:
    """Random-weight open_clip ``new_name`` with default-shaped stage-2 heads into ``old_name``'s width."""
    from xbt.models.head import Projection

    new = xbt.load_clip(new_name, device="cpu")
    d_old = xbt.load_clip(old_name, device="cpu").embed_dim
    torch.manual_seed(0)
    heads = {m: Projection(new.embed_dim, d_old, hidden=1024).eval() for m in ("text", "image")}
    adapter = xbt.Adapter(new, heads=heads, method="xbt").merge()
    images, captions = xbt.toy.test_split(max(batches))
    texts = [c[0] for c in captions]
    name = f"{new_name} -> {old_name} (random weights)"
    return _ratios(name, new, adapter, texts, images, repeats, {"text": batches, "image": batches})


def _ratios(name, new, adapter, texts, images, repeats: int, batches: dict) -> dict:
    out = {"world": name, "query_cost": adapter.query_cost, "ratios": {}}
    with torch.no_grad():
        for modality in ("text", "image"):
            for batch in batches[modality]:
                items = (texts if modality == "text" else images)[:batch]
                bare = getattr(new, f"encode_{modality}")
                ours = getattr(adapter, f"encode_{modality}")
                for _ in range(3):  # warm-up
                    bare(items), ours(items)
                rounds = paired_rounds(bare, ours, items, repeats)
                ratio = statistics.median(o / b for b, o in rounds)
                out["ratios"][f"{modality} batch {batch}"] = {
                    "ratio": round(ratio, 3),
                    "bare_ms": round(1000 * statistics.median(b for b, _ in rounds), 3),
                    "adapter_ms": round(1000 * statistics.median(o for _, o in rounds), 3),
                }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worlds", nargs="*", default=["shapes", "patterns-wide"])
    parser.add_argument("--real", nargs=2, metavar=("NEW", "OLD"), help="also a real-size open_clip pair")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--real-batches", type=int, nargs="+", default=[1, 32], help="batch sizes of the real pair")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "query_cost.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = [measure(w, args.repeats) for w in args.worlds]
    if args.real:
        results.append(measure_real(*args.real, args.repeats, tuple(args.real_batches)))
    print("| world | query | merged adapter ÷ bare new model (median of rounds) | bare ms | adapter ms |")
    print("|---|---|---|---|---|")
    for res in results:
        for query, r in res["ratios"].items():
            print(f"| {res['world']} | {query} | {r['ratio']:.3f}× | {r['bare_ms']:.2f} | {r['adapter_ms']:.2f} |")
    write_json(args.out, {"args": {k: str(v) for k, v in vars(args).items()}, "results": results})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

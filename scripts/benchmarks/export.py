"""Benchmark ONNX serving: onnxruntime against torch query time on CPU, for the toy adapters.

Fits the two toy adapters (XBT stage 1; stage 1+2, whose LoRA torch serves merged), exports each
with ``adapter.export("onnx", ...)`` and times, in this one run, the end-to-end query path (raw
strings / PIL images in, old-space vectors out: tokenization and preprocessing included) of

* ``torch``: ``adapter.encode_text`` / ``adapter.encode_image`` (merged LoRA for stage 1+2);
* ``onnxruntime``: ``xbt_runtime.load(folder).encode_text`` / ``encode_image``;

at batch sizes 1 and 32, both on ``--threads`` CPU threads (default 1): ``--repeats`` rounds of one
torch call then one onnxruntime call after warm-up; the medians of each and the median of the
per-round ratio (alternating keeps a shared machine's load changes out of the ratio). Also reports
the largest |onnxruntime - torch| on the timed inputs.
Prints a table and writes JSON to ``--out`` (default benchmarks/out/export.json).

    python -m scripts.benchmarks.export [--world toy] [--pairs 200] [--repeats 30] [--threads 1] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import xbt
from xbt.serving import runtime


def world(name: str):
    """The toy world module (``xbt.toy``), or ``xbt.toy.get_world(name)`` once other worlds exist."""
    if name == "toy":
        return xbt.toy
    return xbt.toy.get_world(name)


def paired_times(fn_a, fn_b, repeats: int) -> tuple[float, float, float]:
    """Median seconds of ``fn_a`` and ``fn_b`` and the median of their per-round ratio b / a.

    The two are timed alternately, one call each per round after two warm-up rounds, so a change
    in the machine's load hits both alike (the machine is shared).
    """
    rounds = []
    for r in range(repeats + 2):
        t0 = time.perf_counter()
        fn_a()
        t1 = time.perf_counter()
        fn_b()
        t2 = time.perf_counter()
        if r >= 2:
            rounds.append((t1 - t0, t2 - t1))
    a, b = zip(*rounds)
    return statistics.median(a), statistics.median(b), statistics.median(y / x for x, y in rounds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--world", default="toy")
    ap.add_argument("--texts", type=int, default=5000, help="stage-1 caption corpus")
    ap.add_argument(
        "--pairs", type=int, default=200, help="stage-2 pairs (timing does not depend on training quality)"
    )
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/out/export.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    w = world(args.world)
    old, new = w.load_clips(device="cpu")
    texts = w.text_corpus(args.texts)
    adapters = {
        "xbt stage 1": xbt.fit(old, new, texts, verbose=False),
        "xbt stage 1+2 (merged)": xbt.fit(
            old, new, texts, pairs=w.pair_list(args.pairs), stage2={"epochs": 2}, verbose=False
        ).merge(),
    }
    images, captions = w.test_split(32)
    queries = {"text": [c[0] for c in captions], "image": images}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, adapter in adapters.items():
            served = runtime.load(adapter.export("onnx", Path(tmp) / name.replace(" ", "_")), threads=args.threads)
            paths = {
                "text": (adapter.encode_text, served.encode_text),
                "image": (adapter.encode_image, served.encode_image),
            }
            for modality, (torch_fn, ort_fn) in paths.items():
                for batch in (1, 32):
                    q = queries[modality][:batch]
                    diff = float(np.abs(ort_fn(q) - torch_fn(q).numpy()).max())
                    t_torch, t_ort, ratio = paired_times(lambda: torch_fn(q), lambda: ort_fn(q), args.repeats)
                    rows.append(
                        {
                            "adapter": name,
                            "query": modality,
                            "batch": batch,
                            "torch_ms": 1e3 * t_torch,
                            "onnxruntime_ms": 1e3 * t_ort,
                            "ratio_ort_over_torch": ratio,
                            "max_abs_diff": diff,
                        }
                    )
    result = {
        "world": args.world,
        "threads": args.threads,
        "repeats": args.repeats,
        "texts": args.texts,
        "pairs": args.pairs,
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "onnxruntime": __import__("onnxruntime").__version__,
        },
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("| adapter | query | batch | torch ms | onnxruntime ms | ort / torch | max abs diff |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['adapter']} | {r['query']} | {r['batch']} | {r['torch_ms']:.2f} | {r['onnxruntime_ms']:.2f} | "
            f"{r['ratio_ort_over_torch']:.2f} | {r['max_abs_diff']:.1e} |"
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

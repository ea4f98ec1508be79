"""Benchmark the evaluator's search: FAISS against brute force on a Flickr/COCO-sized gallery.

Synthetic 512-d embeddings stand in for a 5K-image / 25K-caption test set (5 captions per image,
each a noisy copy of its image's embedding, noise set so Recall@1 is far from 0 and 1). Each
method computes per-query hits at K = 1, 5, 10 for both directions (image->text: 5,000 queries
over 25,000 captions; text->image: 25,000 queries over 5,000 images), timed once (one run):

* ``faiss_flat``: ``xbt.evaluation.search.recall_at_k`` with the default exact ``IndexFlatIP``
  (what ``xbt.evaluate`` runs);
* ``faiss_ivf``: the same with ``index="ivf"`` (approximate; includes k-means training; isotropic
  random vectors have no cluster structure, the worst case for IVF recall, so read its recall
  here as a floor, not as what real CLIP embeddings get);
* ``brute_numpy``: the tests' reference: full score matrix (in query chunks) and a stable argsort;
* ``brute_torch``: full score matrix (in query chunks) and ``torch.topk`` (a strong brute force).

Prints the results as JSON and writes them to ``--out`` (default benchmarks/out/search.json).

    python -m scripts.benchmarks.search [--images 5000] [--captions-per-image 5] [--dim 512] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from xbt.evaluation.search import recall_at_k

KS = (1, 5, 10)
CHUNK = 2048


def make_embeddings(n_images: int, per_image: int, dim: int, noise: float, seed: int):
    """Unit image embeddings and ``per_image`` noisy unit caption embeddings for each image."""
    rng = np.random.default_rng(seed)
    img = rng.standard_normal((n_images, dim)).astype(np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    owner = np.repeat(np.arange(n_images), per_image)
    eps = rng.standard_normal((len(owner), dim)).astype(np.float32)
    eps /= np.linalg.norm(eps, axis=1, keepdims=True)
    cap = img[owner] + noise * eps
    cap /= np.linalg.norm(cap, axis=1, keepdims=True)
    return img, cap, owner


def brute_numpy(q, g, q_owner, g_owner, ks=KS):
    """Full scores and a stable argsort per query chunk (the reference of tests/test_evaluate.py)."""
    hits = {k: [] for k in ks}
    for s in range(0, len(q), CHUNK):
        order = np.argsort(-(q[s : s + CHUNK] @ g.T), axis=1, kind="stable")
        match = g_owner[order[:, : max(ks)]] == q_owner[s : s + CHUNK, None]
        for k in ks:
            hits[k].append(match[:, :k].any(axis=1))
    return {k: np.concatenate(v) for k, v in hits.items()}


def brute_torch(q, g, q_owner, g_owner, ks=KS):
    """Full scores and ``torch.topk`` per query chunk."""
    qt, gt = torch.from_numpy(q), torch.from_numpy(g)
    go, qo = torch.from_numpy(g_owner), torch.from_numpy(q_owner)
    hits = {k: [] for k in ks}
    for s in range(0, len(q), CHUNK):
        top = (qt[s : s + CHUNK] @ gt.T).topk(min(max(ks), len(g)), dim=1).indices
        match = go[top] == qo[s : s + CHUNK, None]
        for k in ks:
            hits[k].append(match[:, :k].any(dim=1).numpy())
    return {k: np.concatenate(v) for k, v in hits.items()}


def main() -> None:
    """Run the benchmark and write its JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--captions-per-image", type=int, default=5)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--noise", type=float, default=6.0, help="caption = image + noise * unit noise, renormalised")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/out/search.json")
    args = p.parse_args()

    import faiss

    img, cap, cap_owner = make_embeddings(args.images, args.captions_per_image, args.dim, args.noise, args.seed)
    img_owner = np.arange(args.images)
    directions = {"i2t": (img, cap, img_owner, cap_owner), "t2i": (cap, img, cap_owner, img_owner)}
    methods = {
        "faiss_flat": lambda q, g, qo, go: recall_at_k(q, g, qo, go, KS).hits,
        "faiss_ivf": lambda q, g, qo, go: recall_at_k(q, g, qo, go, KS, index="ivf").hits,
        "brute_numpy": brute_numpy,
        "brute_torch": brute_torch,
    }
    seconds: dict[str, dict[str, float]] = {}
    recall: dict[str, dict[str, dict[str, float]]] = {}
    hits_of: dict[str, dict[str, dict[int, np.ndarray]]] = {}
    for name, fn in methods.items():
        seconds[name], recall[name], hits_of[name] = {}, {}, {}
        for d, (q, g, qo, go) in directions.items():
            t0 = time.perf_counter()
            hits = fn(q, g, qo, go)
            seconds[name][d] = round(time.perf_counter() - t0, 3)
            hits_of[name][d] = hits
            recall[name][d] = {str(k): round(float(hits[k].mean()), 5) for k in KS}
        seconds[name]["total"] = round(seconds[name]["i2t"] + seconds[name]["t2i"], 3)
        print(
            f"{name:12s} i2t {seconds[name]['i2t']:8.3f} s  t2i {seconds[name]['t2i']:8.3f} s  "
            f"total {seconds[name]['total']:8.3f} s  R@1 i2t {recall[name]['i2t']['1']:.4f} t2i "
            f"{recall[name]['t2i']['1']:.4f}",
            flush=True,
        )

    def agreement(a: str, b: str) -> float:
        same = [np.mean(hits_of[a][d][k] == hits_of[b][d][k]) for d in directions for k in KS]
        return round(float(np.min(same)), 6)

    flat = seconds["faiss_flat"]["total"]
    result = {
        "benchmark": "search: Recall@1/5/10 both directions, one run each",
        "config": {
            "images": args.images,
            "captions": len(cap),
            "dim": args.dim,
            "ks": list(KS),
            "noise": args.noise,
            "seed": args.seed,
        },
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "faiss": faiss.__version__,
            "numpy": np.__version__,
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "faiss_omp_threads": faiss.omp_get_max_threads(),
        },
        "seconds": seconds,
        "ratio_vs_faiss_flat": {name: round(s["total"] / flat, 2) for name, s in seconds.items()},
        "recall": recall,
        "hit_agreement_with_brute_numpy": {name: agreement(name, "brute_numpy") for name in methods},
        "note": "one run each; faiss_ivf includes training and is approximate (random vectors: worst case for IVF)",
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

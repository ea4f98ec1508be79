"""Forward map (old gallery vectors -> new space) against the query-side adapter, on the compatible toy worlds.

    python -m scripts.benchmarks.forward                      # shapes and patterns-wide, seeds 0 1 2
    python -m scripts.benchmarks.forward --worlds shapes --seeds 0

For each world and seed, on the test split (1,000 images x 5 captions), R@1/5/10 in both directions of:

- old->old, new->new (a full backfill) and the world's ceiling (the best through the frozen old gallery);
- **backward**: ``xbt.fit(old, new, texts, pairs=pairs)`` as a user calls it, new queries -> old gallery;
- **forward**: ``xbt.fit_forward(old, new, texts, pairs=pairs)``, the bare new model's queries -> the old
  gallery's vectors upgraded into the new space (``ForwardMap.upgrade``), nothing re-embedded.

Both read 50,000 captions of the world's corpus less the test captions and the same 2,000 pair images
(one caption each). Then, for the forward map, the gallery in migration: a random share of the items
re-embedded by the new model, the rest upgraded, all searched in the new space with no calibration;
R@1 and R@10 at 0, 10, 25, 50, 75 and 100 % (mean of 5 orders), against the straight line from its 0 %
point to new->new. Prints the tables and writes JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import xbt
from xbt.core.files import write_json
from xbt.evaluation.search import recall_at_k
from xbt.forward import fit_forward
from xbt.models.embedding import embed_images, embed_texts
from xbt.toy.worlds import WORLDS, load_toy

KS = (1, 5, 10)
DIRS = ("i2t", "t2i")
FRACTIONS = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)


def recalls(img_q, cap_g, cap_q, img_g, cap_owner) -> dict:
    """R@K in % both ways: images query captions (any of its five), captions query images."""
    n = len(img_q)
    i2t = recall_at_k(img_q, cap_g, np.arange(n), cap_owner, KS).recall
    t2i = recall_at_k(cap_q, img_g, cap_owner, np.arange(n), KS).recall
    return {"i2t": {k: round(100 * i2t[k], 2) for k in KS}, "t2i": {k: round(100 * t2i[k], 2) for k in KS}}


def migration(test: dict, up: dict, cap_owner: np.ndarray, orders: int = 5) -> dict:
    """R@1/R@10 of the forward gallery in migration at each fraction re-embedded (mean over random orders)."""
    out = {}
    for d in DIRS:
        rows = []
        for f in FRACTIONS:
            runs = []
            for seed in range(orders):
                gallery = (up["txt"] if d == "i2t" else up["img"]).clone()
                fresh = test["new_txt"] if d == "i2t" else test["new_img"]
                chosen = torch.randperm(len(gallery), generator=torch.Generator().manual_seed(seed))
                chosen = chosen[: round(f * len(gallery))]
                gallery[chosen] = fresh[chosen]
                args = (
                    (test["new_img"], gallery, test["new_txt"], test["new_img"])
                    if d == "i2t"
                    else (test["new_img"], test["new_txt"], test["new_txt"], gallery)
                )
                runs.append(recalls(*args, cap_owner)[d])
            rows.append({k: round(float(np.mean([r[k] for r in runs])), 2) for k in (1, 10)})
        out[d] = rows
    return out


def below_line(rows: list[dict]) -> dict:
    """Fractions where the curve falls under the straight line from its 0 % point to its 100 % point."""
    out = {}
    for k in (1, 10):
        lo, hi = rows[0][k], rows[-1][k]
        out[k] = {
            f"{int(f * 100)}%": round(r[k] - (lo + f * (hi - lo)), 2)
            for f, r in zip(FRACTIONS, rows)
            if r[k] < lo + f * (hi - lo) - 1e-9
        }
    return out


def run_world(name: str, seeds, n_texts: int, n_pairs: int, config: dict | None = None) -> dict:
    world = WORLDS[name]
    old, new = world.load_clips()
    texts, pairs = world.text_memory(n_texts), world.pairs(n_pairs)
    ds = load_toy(world=name)
    caps = [c for cs in ds.captions for c in cs]
    cap_owner = np.repeat(np.arange(len(ds.images)), [len(cs) for cs in ds.captions])
    test = {
        "old_img": embed_images(old, ds.images, verbose=False),
        "old_txt": embed_texts(old, caps, verbose=False),
        "new_img": embed_images(new, ds.images, verbose=False),
        "new_txt": embed_texts(new, caps, verbose=False),
    }
    ceiling = world.ceiling()
    out = {
        "old_old": recalls(test["old_img"], test["old_txt"], test["old_txt"], test["old_img"], cap_owner),
        "new_new": recalls(test["new_img"], test["new_txt"], test["new_txt"], test["new_img"], cap_owner),
        "ceiling": None if ceiling is None else {d: {k: round(100 * ceiling[d][k], 2) for k in KS} for d in DIRS},
        "seeds": {},
    }
    for seed in seeds:
        t0 = time.perf_counter()
        adapter = xbt.fit(old, new, texts, pairs=pairs, seed=seed, verbose=False)
        t1 = time.perf_counter()
        fmap = fit_forward(old, new, texts, pairs=pairs, seed=seed, config=config, verbose=False)
        t2 = time.perf_counter()
        ad_img = adapter.from_new_embeddings(test["new_img"], "image")
        ad_txt = adapter.from_new_embeddings(test["new_txt"], "text")
        up = {"img": fmap.upgrade(test["old_img"], "image"), "txt": fmap.upgrade(test["old_txt"], "text")}
        rec = {
            "backward": recalls(ad_img, test["old_txt"], ad_txt, test["old_img"], cap_owner),
            "forward": recalls(test["new_img"], up["txt"], test["new_txt"], up["img"], cap_owner),
            "forward_migration": migration(test, up, cap_owner),
            "fit_seconds": {"backward": round(t1 - t0, 1), "forward": round(t2 - t1, 1)},
            "forward_kept_epochs": {m: fmap.training[f"{m}_head"]["kept_epoch"] for m in ("text", "image")},
        }
        rec["forward_below_line"] = {d: below_line(rec["forward_migration"][d]) for d in DIRS}
        out["seeds"][seed] = rec
        print(
            f"[{name}] seed {seed}: backward {rec['backward']['i2t'][1]:.2f} / {rec['backward']['t2i'][1]:.2f}, "
            f"forward {rec['forward']['i2t'][1]:.2f} / {rec['forward']['t2i'][1]:.2f} (R@1 I2T / T2I; fits "
            f"{t1 - t0:.0f} s / {t2 - t1:.0f} s)",
            flush=True,
        )
    return out


def fmt(r: dict, d: str) -> str:
    return " / ".join(f"{r[d][k]:.2f}" for k in KS)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worlds", nargs="+", default=["shapes", "patterns-wide"], choices=list(WORLDS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--texts", type=int, default=50_000)
    p.add_argument("--pairs", type=int, default=2000)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 beside other work)")
    p.add_argument("--config", type=json.loads, default=None, help="ForwardConfig fields as JSON")
    p.add_argument("--out", default="benchmarks/out/forward")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    results = {name: run_world(name, args.seeds, args.texts, args.pairs, args.config) for name in args.worlds}
    for name, r in results.items():
        for d in DIRS:
            print(f"\n{name} {d.upper()}, R@1 / R@5 / R@10")
            print("| row | " + " | ".join(f"seed {s}" for s in args.seeds) + " |")
            print("|---" * (len(args.seeds) + 1) + "|")
            for row in ("old_old", "new_new", "ceiling"):
                if r[row] is not None:
                    print(f"| {row.replace('_', '->')} | " + " | ".join(fmt(r[row], d) for _ in args.seeds) + " |")
            for how in ("backward", "forward"):
                print(f"| {how} | " + " | ".join(fmt(r["seeds"][s][how], d) for s in args.seeds) + " |")
            ahead = [
                "forward" if r["seeds"][s]["forward"][d][1] > r["seeds"][s]["backward"][d][1] else "backward"
                for s in args.seeds
            ]
            print(f"ahead at R@1: {', '.join(ahead)}")
            for s in args.seeds:
                mig = r["seeds"][s]["forward_migration"][d]
                print(
                    f"  seed {s} forward gallery in migration R@1 / R@10 at "
                    + ", ".join(f"{int(f * 100)}%: {m[1]:.2f} / {m[10]:.2f}" for f, m in zip(FRACTIONS, mig))
                    + f"; below the straight line: {r['seeds'][s]['forward_below_line'][d]}"
                )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(
        out / "forward.json",
        {"results": results, "config": args.config, "seconds": round(time.perf_counter() - t0, 1)},
    )
    print(f"\nwrote {out / 'forward.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

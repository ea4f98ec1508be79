"""The ceiling of a toy world: the best Recall@K a query can reach through its frozen OLD gallery.

    python -m scripts.benchmarks.ceiling --world shapes      # writes benchmarks/out/ceiling_shapes.json
    python -m scripts.benchmarks.ceiling --world patterns

An instrument, not a product feature. new->new is not reachable through a frozen old gallery (what
the old vectors cannot tell apart, no query can), so closure against new->new hides how close a
method already is. The ceiling is a query-side map on frozen NEW features trained with abundant
supervision against the OLD model's vectors of the same items, per direction:

- image queries (I2T): new image embedding -> map -> searched among the OLD caption vectors; trained
  with a multi-positive InfoNCE (each image against the old vectors of its five captions, the other
  images' captions in the batch as negatives);
- text queries (T2I): new caption embedding -> map -> searched among the OLD image vectors; InfoNCE
  against the caption's own image.

Data: ``--images`` (default 20,000) images x 5 captions of the world's ``ceiling`` split, which no
other part of the project uses; 1,000 of those images are held out. Each map is xbt's projection
head (residual MLP, Procrustes start), trained with AdamW and a cosine schedule; for each of the
temperatures tried, training stops when held-out mean Recall@{1,5,10} has not improved for
``--patience`` epochs, and the temperature with the best held-out score is kept. The test split is
used once, at the end, to report the chosen maps. Other benchmark scripts read the JSON and add a
ceiling row (``Report.set_ceiling``).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from xbt import toy
from xbt.baselines.maps import orthogonal_procrustes
from xbt.core.files import write_json
from xbt.core.seeding import seeded
from xbt.evaluation.search import recall_at_k
from xbt.models.embedding import embed_images, embed_texts
from xbt.models.head import Projection

ROOT = Path(__file__).resolve().parents[2]

KS = (1, 5, 10)
OUT = ROOT / "benchmarks" / "out"
CEILINGS = ROOT / "xbt" / "toy" / "weights" / "ceilings.json"


def ceiling_path(world: str) -> Path:
    """Where ``main`` writes a world's ceiling (read by the other benchmark scripts)."""
    return OUT / f"ceiling_{world}.json"


def read_ceiling(world: str) -> dict | None:
    """The ceiling Recall@K of ``world`` (direction -> K -> recall in [0, 1]), or None if not measured yet."""
    return toy.get_world(world).ceiling()


def _recall(queries, gallery, q_owner, g_owner) -> dict[int, float]:
    return recall_at_k(queries, gallery, q_owner, g_owner, KS).recall


def train_map(queries, targets, q_owner, g_owner, val_owners, temperature, epochs, patience, batch, seed):
    """One ceiling map: queries [nq, d_new] -> targets' space [nt, d_old]; positives share an owner id.

    Batches are sets of owners (images); the loss is multi-positive InfoNCE. Returns the map with
    the best held-out mean Recall@{1,5,10} and that score (in %).
    """
    gen = torch.Generator().manual_seed(seed)
    is_val = torch.zeros(int(max(q_owner.max(), g_owner.max())) + 1, dtype=torch.bool)
    is_val[val_owners] = True
    tr_owners = torch.nonzero(~is_val[: int(g_owner.max()) + 1]).flatten()
    vq, vg = torch.nonzero(is_val[q_owner]).flatten(), torch.nonzero(is_val[g_owner]).flatten()
    with seeded(seed):
        head = Projection(queries.shape[1], targets.shape[1], 1024)
    train_q, train_t = ~is_val[q_owner], ~is_val[g_owner]
    with torch.no_grad():  # Procrustes start on the training rows that share an owner (one target per query)
        first_target = {int(o): i for i, o in reversed(list(enumerate(g_owner.tolist())))}
        rows = torch.nonzero(train_q).flatten()
        head.linear.weight.copy_(
            orthogonal_procrustes(queries[rows], targets[[first_target[int(o)] for o in q_owner[rows]]])
        )
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * math.ceil(len(tr_owners) / batch))
    q_by, t_by = _rows_by_owner(q_owner, train_q), _rows_by_owner(g_owner, train_t)

    def held_out() -> float:
        head.eval()
        with torch.no_grad():
            r = _recall(head(queries[vq]), targets[vg], q_owner[vq], g_owner[vg])
        head.train()
        return 100 * float(np.mean(list(r.values())))

    best, best_state, bad = held_out(), copy.deepcopy(head.state_dict()), 0
    for _ in range(epochs):
        order = tr_owners[torch.randperm(len(tr_owners), generator=gen)]
        for s in range(0, len(order), batch):
            owners = order[s : s + batch]
            qi = torch.cat([q_by[int(o)] for o in owners])
            ti = torch.cat([t_by[int(o)] for o in owners])
            logits = head(queries[qi]) @ targets[ti].T / temperature
            positive = q_owner[qi][:, None] == g_owner[ti][None, :]
            loss = (
                torch.logsumexp(logits, 1) - torch.logsumexp(logits.masked_fill(~positive, float("-inf")), 1)
            ).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        score = held_out()
        if score > best:
            best, best_state, bad = score, copy.deepcopy(head.state_dict()), 0
        else:
            bad += 1
            if bad >= patience:
                break
    head.load_state_dict(best_state)
    return head.eval(), best


def _rows_by_owner(owner: torch.Tensor, keep: torch.Tensor) -> dict[int, torch.Tensor]:
    out: dict[int, list[int]] = {}
    for i, o in enumerate(owner.tolist()):
        if keep[i]:
            out.setdefault(o, []).append(i)
    return {o: torch.tensor(v) for o, v in out.items()}


def measure(world_name: str, n_images: int, temperatures, epochs: int, patience: int, seed: int = 0) -> dict:
    """Train both ceiling maps of ``world_name`` and report their test Recall@K (and the held-out choice)."""
    world = toy.get_world(world_name)
    old, new = world.load_clips()
    t0 = time.perf_counter()
    images, captions = world.ceiling_split(n_images)
    flat = [c for cs in captions for c in cs]
    cap_owner = torch.as_tensor(np.repeat(np.arange(len(captions)), [len(c) for c in captions]))
    img_owner = torch.arange(len(images))
    opts = {"verbose": True}
    new_img, old_img = embed_images(new, images, **opts), embed_images(old, images, **opts)
    new_txt, old_txt = embed_texts(new, flat, **opts), embed_texts(old, flat, **opts)
    del images
    val_owners = torch.randperm(len(captions), generator=torch.Generator().manual_seed(seed))[:1000]
    test_images, test_captions = world.test_split()
    t_flat = [c for cs in test_captions for c in cs]
    t_cap_owner = np.repeat(np.arange(len(test_captions)), [len(c) for c in test_captions])
    t_img_owner = np.arange(len(test_images))
    g_old_img, g_old_txt = embed_images(old, test_images, **opts), embed_texts(old, t_flat, **opts)
    q_new_img, q_new_txt = embed_images(new, test_images, **opts), embed_texts(new, t_flat, **opts)
    result = {
        "world": world_name,
        "n_images": n_images,
        "n_captions": len(flat),
        "held_out_images": len(val_owners),
        "temperatures": list(temperatures),
        "max_epochs": epochs,
        "patience": patience,
        "choice": {},
        "test": {},
    }
    for direction, q, t, qo, go, tq, tg, tqo, tgo in (
        ("i2t", new_img, old_txt, img_owner, cap_owner, q_new_img, g_old_txt, t_img_owner, t_cap_owner),
        ("t2i", new_txt, old_img, cap_owner, img_owner, q_new_txt, g_old_img, t_cap_owner, t_img_owner),
    ):
        tried = {}
        best = None
        for tau in temperatures:
            head, score = train_map(q, t, qo, go, val_owners, tau, epochs, patience, batch=512, seed=seed)
            tried[str(tau)] = round(score, 3)
            print(
                f"[{world_name}] {direction} ceiling map, temperature {tau}: held-out mean R@1/5/10 {score:.2f}",
                flush=True,
            )
            if best is None or score > best[1]:
                best = (head, score, tau)
        head, _, tau = best
        with torch.no_grad():
            test = _recall(head(tq), tg, tqo, tgo)
        result["choice"][direction] = {"temperature": tau, "held_out_mean_recall": tried}
        result["test"][direction] = {str(k): v for k, v in test.items()}
        print(
            f"[{world_name}] {direction} ceiling on test: "
            + " / ".join(f"R@{k} {100 * v:.2f}" for k, v in test.items()),
            flush=True,
        )
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", default="shapes", help="toy world: shapes or patterns")
    parser.add_argument("--images", type=int, default=20_000, help="supervised images (5 captions each)")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.02, 0.05])
    parser.add_argument("--epochs", type=int, default=150, help="most epochs per map")
    parser.add_argument("--patience", type=int, default=10, help="epochs without held-out gain before stopping")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (1 beside other work)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = measure(args.world, args.images, args.temperatures, args.epochs, args.patience)
    write_json(ceiling_path(args.world), result)
    # the shipped record beside the world's weights: what the demo and the benchmarks read (World.ceiling)
    recorded = json.loads(CEILINGS.read_text()) if CEILINGS.is_file() else {}
    recorded[args.world] = {
        "test": result["test"],
        "temperatures": {d: c["temperature"] for d, c in result["choice"].items()},
        "n_images": args.images,
        "command": " ".join(["python -m scripts.benchmarks.ceiling", *sys.argv[1:]]),
    }
    write_json(CEILINGS, recorded)
    print(f"wrote {ceiling_path(args.world)} and the record in {CEILINGS}")


if __name__ == "__main__":
    main()

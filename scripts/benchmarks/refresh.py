"""The adapter refreshed from what a backfill re-embedded, against the adapter as trained, by fraction backfilled.

    python -m scripts.benchmarks.refresh                        # shapes and patterns-wide, 3 random orders
    python -m scripts.benchmarks.refresh --worlds shapes --orders 1

For each compatible world, the default adapter (``xbt.fit(old, new, world.text_memory(50_000),
pairs=world.pairs(2000))``, saved under ``--adapters`` and reused), and both directions of the test split
(T2I: captions query a mixed image gallery; I2T: images query a mixed caption gallery), at 0, 10, 25, 50, 75
and 100 % re-embedded in a random order (mean of ``--orders``):

- **without refresh**: the calibrated merge with the adapter as trained (``scripts.benchmarks.backfill``'s row);
- **with refresh**: at each fraction, ``cluster.refresh_adapter`` on the items re-embedded so far (their OLD and
  NEW vectors) with query examples of the other modality that are not test queries (10,000 texts of the world's
  corpus less the test captions for an image gallery; the 2,000 pair images for a caption gallery); the score
  calibration is fitted again for the refreshed queries on the same pair set; the guard (500 other pairs,
  ``world.pair_list(500, seed=1)``, never trained on) may keep the adapter;
- **with refresh + captions** (T2I only): the re-embedded images' own captions join the refresh (each finds its
  image's OLD vector); as those are test captions, this row and the ``without refresh`` row beside it
  (``unseen``) are measured only on the query captions whose text is not among them;
- **the part not re-embedded yet**: new->old R@1 of the queries whose right item is still old, searching only
  the old part, with the adapter and with its refreshed form.

R@1 and R@10; the check: with refresh at or above without, at every fraction, both directions, both K. Where
the verdict on the calibration pairs (``layout_verdict``) hands the old part to the OLD model's queries (the safe
path) there is nothing to refresh and the direction is skipped, unless ``--force-adapter``.
Prints the tables and writes JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

import xbt
from scripts.benchmarks.backfill import FRACTIONS, KS, recall
from xbt.adapters.config import ModelRef
from xbt.cluster.refresh import QUERY_OF, refresh_adapter
from xbt.core.files import write_json
from xbt.gallery.calibration_fit import calibration_set, fit_calibration
from xbt.gallery.mixed import MixedGallery
from xbt.gallery.pair_vectors import layout_verdict, pair_vectors
from xbt.gallery.planner import plan_order
from xbt.models.embedding import embed_texts
from xbt.toy.worlds import get_world


def adapted(adapter, vectors: np.ndarray, modality: str) -> np.ndarray:
    return adapter.from_new_embeddings(torch.from_numpy(np.asarray(vectors)), modality).numpy()


def old_part_r1(q_ad, g_old, old_ids, g_owner, q_owner) -> float:
    """R@1 of the queries whose right item is still old, searching the old part alone (adapter queries)."""
    still = np.isin(q_owner, g_owner[old_ids])
    if not still.any():
        return float("nan")
    best = old_ids[(q_ad[still] @ g_old[old_ids].T).argmax(1)]
    return float((g_owner[best] == q_owner[still]).mean() * 100)


def run_world(name: str, orders: int, adapters: Path, force_adapter: bool = False) -> dict:
    world = get_world(name)
    old, new = world.load_clips()
    folder = adapters / f"{name}-stage12"
    if not (folder / "xbt_config.json").is_file():
        print(f"[{name}] fitting the adapter (stage 1+2), saved to {folder}", flush=True)
        xbt.fit(old, new, world.text_memory(50_000), pairs=world.pairs(2000), verbose=False).save_pretrained(folder)
    adapter = xbt.load_adapter(folder, new=new, old=old)
    images, caps = world.test_split()
    flat = [c for cs in caps for c in cs]
    cap_owner = np.repeat(np.arange(len(images)), [len(cs) for cs in caps])
    test, _ = pair_vectors(adapter, old, (images, flat))
    pairs = world.pair_list(2000)
    pv, _ = pair_vectors(adapter, old, ([im for im, _ in pairs], [c for _, c in pairs]))
    cal_pairs = world.pair_list(1000, seed=2, captions_per_image=5)  # neither trained on nor the guard's
    cv, cal_ids = pair_vectors(adapter, old, ([im for im, _ in cal_pairs], [c for _, c in cal_pairs]))
    guard_pairs = world.pair_list(500, seed=1)
    gv, _ = pair_vectors(adapter, old, ([im for im, _ in guard_pairs], [c for _, c in guard_pairs]))
    texts = world.text_memory(10_000)
    query_examples = {"text": embed_texts(new, texts, verbose=False).numpy(), "image": pv["new_img"]}
    out: dict = {}
    for direction, items in (("t2i", "image"), ("i2t", "text")):
        qm = QUERY_OF[items]  # the query modality
        key_q, key_g = ("txt", "img") if items == "image" else ("img", "txt")
        g_owner = np.arange(len(images)) if items == "image" else cap_owner
        q_owner = cap_owner if items == "image" else np.arange(len(images))
        g_old, g_new = test[f"old_{key_g}"], test[f"new_{key_g}"]
        gallery = MixedGallery(ModelRef.of(old), new.embed_dim, items)
        gallery.add_old(g_old)
        gallery.use_old_queries(adapter, verdict=layout_verdict(cv, cal_ids, gallery.query_modality))
        verdict = gallery.old_queries_reason
        if gallery.old_queries == "old model" and not force_adapter:
            out[direction] = {"skipped": f"the old part is searched with {verdict}"}
            continue
        base_cal = fit_calibration(*calibration_set(cv, cal_ids, items))
        labels = ["without refresh", "with refresh"] + (["with refresh + captions"] if items == "image" else [])
        rows = {
            k: []
            for k in labels
            + (["without refresh, unseen", "with refresh + captions, unseen"] if items == "image" else [])
        }
        old_part = {k: [] for k in rows}
        kept = []
        for f in FRACTIONS:
            runs = {k: [] for k in rows}
            parts = {k: [] for k in rows}
            for seed in range(orders):
                order = plan_order(g_old, "random", seed=seed)
                chosen, rest = order[: round(f * len(order))], order[round(f * len(order)) :]
                gallery.rollback()
                if len(chosen):
                    gallery.set_new(chosen, g_new[chosen])
                variants = {"without refresh": (adapter, base_cal)}
                seen = np.zeros(len(q_owner), bool)  # query captions whose text a refresh trained on
                for label in labels[1:]:
                    extra = {}
                    if label.endswith("captions") and 0 < f < 1:
                        rows_of_chosen = np.flatnonzero(np.isin(cap_owner, chosen))
                        where = np.full(len(images), -1)
                        where[chosen] = np.arange(len(chosen))
                        extra = {
                            "item_queries_new": test["new_txt"][rows_of_chosen],
                            "item_of_query": where[cap_owner[rows_of_chosen]],
                        }
                        trained = {flat[i] for i in rows_of_chosen}
                        seen = np.array([c in trained for c in flat])
                    if not 0 < f < 1:
                        variants[label] = variants["without refresh"]
                        continue
                    refreshed, record = refresh_adapter(
                        adapter,
                        items,
                        g_old[chosen],
                        g_new[chosen],
                        query_examples[qm],
                        gv[f"new_{key_q}"],
                        gv[f"old_{key_g}"],
                        {"seed": seed},
                        verbose=False,
                        **extra,
                    )
                    kept.append(
                        {
                            "row": label,
                            "fraction": f,
                            "order": seed,
                            "kept": record["kept"],
                            "gain_and_se": record["gain_and_se"],
                            "clear_gain_bar": record["clear_gain_bar"],
                        }
                    )
                    if refreshed is adapter:  # the guard kept the adapter: its calibration stands
                        variants[label] = variants["without refresh"]
                        continue
                    rcv = {**cv, f"ad_{key_q}": adapted(refreshed, cv[f"new_{key_q}"], qm)}
                    variants[label] = (refreshed, fit_calibration(*calibration_set(rcv, cal_ids, items)))
                for label, (ad, cal) in variants.items():
                    q_ad = adapted(ad, test[f"new_{key_q}"], qm)
                    gallery.calibration = cal
                    _, ids = gallery.search(test[f"new_{key_q}"], q_ad, k=max(KS), merge="calibrated")
                    subsets = [(label, np.ones(len(q_owner), bool))]
                    if items == "image" and label in ("without refresh", "with refresh + captions"):
                        subsets.append((label + ", unseen", ~seen))
                    for row, mask in subsets:
                        runs[row].append(recall(ids[mask], g_owner, q_owner[mask]))
                        if len(rest):
                            parts[row].append(old_part_r1(q_ad[mask], g_old, rest, g_owner, q_owner[mask]))
            for label in rows:
                rows[label].append({k: round(float(np.mean([r[k] for r in runs[label]])), 2) for k in KS})
                old_part[label].append(round(float(np.mean(parts[label])), 2) if parts[label] else None)
        pairs_compared = [("with refresh", "without refresh")] + (
            [("with refresh + captions, unseen", "without refresh, unseen")] if items == "image" else []
        )
        below = {
            f"{a}: {int(f * 100)}%/R@{k}": round(w[k] - wo[k], 2)
            for a, b in pairs_compared
            for f, w, wo in zip(FRACTIONS, rows[a], rows[b])
            for k in KS
            if w[k] < wo[k] - 1e-9
        }
        out[direction] = {
            "rows": rows,
            "old_part_r1": old_part,
            "kept": kept,
            "below_without": below,
            "old_part_searched_with": verdict
            if gallery.old_queries != "old model"
            else f"the adapter, forced ({verdict})",
        }
        print(f"\n[{name}] {direction.upper()} (R@1 / R@10; mean of {orders} random orders)")
        print("| row | " + " | ".join(f"{int(f * 100)}%" for f in FRACTIONS) + " |")
        print("|---" * (len(FRACTIONS) + 1) + "|")
        for label, vals in rows.items():
            print(f"| {label} | " + " | ".join(f"{v[1]:.2f} / {v[10]:.2f}" for v in vals) + " |")
        for label, vals in old_part.items():
            print(
                f"| old part alone, R@1, {label} | "
                + " | ".join("-" if v is None else f"{v:.2f}" for v in vals)
                + " |"
            )
        for label in labels[1:]:
            mine = [k for k in kept if k["row"] == label]
            n_kept = sum(k["kept"].startswith("refreshed") for k in mine)
            print(f"{label}: the guard kept a refreshed head {n_kept} times of {len(mine)}")
        print(f"below the row without refresh: {below or 'nowhere'}")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worlds", nargs="+", default=["shapes", "patterns-wide"])
    p.add_argument("--orders", type=int, default=3)
    p.add_argument("--adapters", default="benchmarks/out/adapters")
    p.add_argument(
        "--force-adapter",
        action="store_true",
        help="refresh and serve the adapter where its verdict would hand the old part to the old model's queries",
    )
    p.add_argument("--out", default="benchmarks/out/refresh")
    args = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    results = {name: run_world(name, args.orders, Path(args.adapters), args.force_adapter) for name in args.worlds}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "refresh.json", {"results": results, "seconds": round(time.perf_counter() - t0, 1)})
    print(f"\nwrote {out / 'refresh.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

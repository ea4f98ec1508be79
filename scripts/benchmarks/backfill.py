"""Partial backfill benchmark: a gallery part old, part new, searched with an adapter, by fraction backfilled.

    python -m scripts.benchmarks.backfill --world shapes      # fits and saves its adapter under
benchmarks/out/adapters/ once

For both directions (T2I: caption queries -> mixed image gallery; I2T: image queries -> mixed
caption gallery) and the fractions 0, 10, 25, 50, 75, 100 %, R@1 and R@10 of:

- merges (random order, mean of ``--seeds`` orders): ``calibrated`` (the global map fitted on the
  pairs, the default), ``per-query`` (moment matching on anchor items scored in both spaces, over
  the global map), ``naive`` (raw cosines side by side), ``interleave`` (ranks, in proportion to
  each part's size); ``calibrated without fusion`` (the same maps, a backfilled item scored by its new
  vector alone), with the search time of both at 50 % (median of alternating rounds, as a ratio);
- the old part is searched with the adapter's queries, or with the OLD model's own where the verdict on the
  calibration pairs (laid out as the gallery is, ``layout_verdict``) says it is not backward compatible
  (``MixedGallery.use_old_queries``; then the row
  ``adapter forced`` shows what serving the adapter anyway gives, and the curve runs from old->old);
- orders (calibrated merge): ``random``, ``uncertainty`` (predicted old/adapter disagreement,
  FastFill-style), ``density`` (crowded old-space regions first), ``spread`` (uncertainty
  taken in turns over k-means clusters of the old vectors); each also with the map fitted on the
  mixes its own order makes of the pairs (``plan-calibrated``).

The calibration is fitted on ``--cal-images`` pair images with all five captions each (the test gallery's
layout), by default images the adapter never saw (``--cal-seed 1``; 0: the first of its own pair images); the
disagreement model on the 2,000 pairs the adapter was trained on and, for captions, the first
``--corpus`` texts of the stage-1 corpus; never on the test split. Checks printed: the calibrated curve starts at
new->old (0 %), ends at or above
new->new (100 %, before cutover, where the calibration fuses there), stays at or above the straight line from its
start to new->new, never below naive; the
planner beats random at 10-50 %; it never falls below old->old. Writes JSON and a PNG to ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

import xbt
from xbt import toy
from xbt.adapters.config import ModelRef
from xbt.core.files import atomic_path, write_json
from xbt.evaluation.search import search
from xbt.gallery.calibration_fit import calibration_set, fit_calibration
from xbt.gallery.mixed import MixedGallery
from xbt.gallery.pair_vectors import layout_verdict, pair_vectors
from xbt.gallery.planner import PLANS, DisagreementModel, plan_order
from xbt.models.embedding import embed_texts

ROOT = Path(__file__).resolve().parents[2]

FRACTIONS = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)
MERGE_ROWS = ("calibrated", "per-query", "naive", "interleave")
KS = (1, 10)


def load_world(name: str):
    if hasattr(toy, "get_world"):
        return toy.get_world("shapes" if name == "toy" else name)
    if name not in ("toy", "shapes"):
        raise SystemExit(f"world {name!r} is not available here (xbt.toy.get_world is missing); use --world toy")
    return toy


def recall(ids: np.ndarray, gallery_owner: np.ndarray, query_owner: np.ndarray) -> dict[int, float]:
    match = (ids >= 0) & (gallery_owner[np.clip(ids, 0, None)] == query_owner[:, None])
    return {k: float(match[:, :k].any(1).mean() * 100) for k in KS}


def curve(gallery: MixedGallery, vec, order: np.ndarray, merge: str, g_owner, q_owner) -> list[dict[int, float]]:
    """R@K at each fraction of ``order`` backfilled (the gallery is rolled back first)."""
    out = []
    for f in FRACTIONS:
        gallery.rollback()
        chosen = order[: int(round(f * gallery.size))]
        if len(chosen):
            gallery.set_new(chosen, vec["g_new"][chosen])
        _, ids = gallery.search(vec["q_new"], vec["q_ad"], k=max(KS), merge=merge)
        out.append(recall(ids, g_owner, q_owner))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--world", default="toy")
    p.add_argument(
        "--adapter",
        default=None,
        help="adapter folder, fitted and saved there if missing (default benchmarks/out/adapters/<world>-stage12)",
    )
    p.add_argument("--seeds", type=int, default=5, help="random orders averaged")
    p.add_argument(
        "--corpus", type=int, default=10_000, help="stage-1 texts the caption disagreement model is fitted on"
    )
    p.add_argument(
        "--cal-images",
        type=int,
        default=1000,
        help="pair images whose five captions each the score calibration is fitted on",
    )
    p.add_argument(
        "--cal-seed",
        type=int,
        default=1,
        help="stream of the calibration's pair images: 1 pairs the adapter never saw (the default), 0 its own",
    )
    p.add_argument("--out", default="benchmarks/out/backfill")
    args = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    world = load_world(args.world)
    if args.adapter is None:
        args.adapter = f"benchmarks/out/adapters/{'shapes' if args.world == 'toy' else args.world}-stage12"
    old, new = world.load_clips()
    if not (Path(args.adapter) / "xbt_config.json").is_file():
        print(f"fitting the adapter (stage 1+2) and saving it to {args.adapter}")
        xbt.fit(old, new, world.text_memory(50_000), pairs=world.pairs(2000)).save_pretrained(args.adapter)
    adapter = xbt.load_adapter(args.adapter, new=new, old=old)
    images, caps = world.test_split()
    flat = [c for cs in caps for c in cs]
    cap_owner = np.repeat(np.arange(len(images)), [len(cs) for cs in caps])
    test, _ = pair_vectors(adapter, old, (images, flat))
    pairs = world.pair_list(2000)
    p_imgs, p_caps = [im for im, _ in pairs], [c for _, c in pairs]
    pv, _ = pair_vectors(adapter, old, (p_imgs, p_caps))
    cal_pairs = world.pair_list(args.cal_images, seed=args.cal_seed, captions_per_image=5)
    cv, cal_ids = pair_vectors(adapter, old, ([im for im, _ in cal_pairs], [c for _, c in cal_pairs]))
    cv_old = {**cv, "ad_img": cv["old_img"], "ad_txt": cv["old_txt"]}  # the old model's queries on the old part
    corpus = world.text_corpus(args.corpus)
    c_old = embed_texts(old, corpus, verbose=False).numpy()
    c_new = embed_texts(adapter.new, corpus, verbose=False)
    c_ad = adapter.from_new_embeddings(c_new, "text")
    c_ad = (c_ad if c_ad is not None else adapter.embed_texts(corpus, verbose=False)).numpy()

    setups = {
        "t2i": dict(
            modality="image",
            q_new=test["new_txt"],
            q_ad=test["ad_txt"],
            q_old=test["old_txt"],
            g_new=test["new_img"],
            g_old=test["old_img"],
            g_owner=np.arange(len(images)),
            q_owner=cap_owner,
            cal=calibration_set(cv, cal_ids, "image"),
            cal_old=calibration_set(cv_old, cal_ids, "image"),
            dis=(pv["old_img"], pv["ad_img"]),
        ),
        "i2t": dict(
            modality="text",
            q_new=test["new_img"],
            q_ad=test["ad_img"],
            q_old=test["old_img"],
            g_new=test["new_txt"],
            g_old=test["old_txt"],
            g_owner=cap_owner,
            q_owner=np.arange(len(images)),
            cal=calibration_set(cv, cal_ids, "text"),
            cal_old=calibration_set(cv_old, cal_ids, "text"),
            dis=(np.concatenate([pv["old_txt"], c_old]), np.concatenate([pv["ad_txt"], c_ad])),
        ),
    }
    results: dict = {
        "world": args.world,
        "adapter": str(args.adapter),
        "fractions": list(FRACTIONS),
        "seeds": args.seeds,
    }
    for direction, s in setups.items():
        t1 = time.perf_counter()
        ref = ModelRef.of(old)
        gallery = MixedGallery(ref, adapter.new.embed_dim, s["modality"])
        gallery.add_old(s["g_old"])
        # the verdict on the calibration pairs, laid out as the gallery is, decides what searches the old part
        gallery.use_old_queries(adapter, verdict=layout_verdict(cv, cal_ids, gallery.query_modality))
        randoms = [plan_order(s["g_old"], "random", seed=seed) for seed in range(args.seeds)]
        safe = gallery.old_queries == "old model"
        cal = fit_calibration(*s["cal_old" if safe else "cal"])
        model = DisagreementModel.fit(*s["dis"])
        calibrations = {"calibrated": cal, "per-query": dataclasses.replace(cal, per_query=True)}
        vec = {"q_new": s["q_new"], "q_ad": s["q_old" if safe else "q_ad"], "g_new": s["g_new"]}
        rows: dict[str, list] = {}
        if safe:  # what serving the adapter's queries anyway would give (xbt gallery build --old-queries adapter)
            gallery.calibration = fit_calibration(*s["cal"])
            forced = {**vec, "q_ad": s["q_ad"]}
            runs = [curve(gallery, forced, order, "calibrated", s["g_owner"], s["q_owner"]) for order in randoms]
            rows["adapter forced / random"] = [
                {k: float(np.mean([r[i][k] for r in runs])) for k in KS} for i in range(len(FRACTIONS))
            ]
        spread: dict[str, list] = {}  # standard deviation over the random orders
        for merge in MERGE_ROWS:
            gallery.calibration = calibrations.get(merge, cal)
            real = "calibrated" if merge == "per-query" else merge
            runs = [curve(gallery, vec, order, real, s["g_owner"], s["q_owner"]) for order in randoms]
            rows[f"{merge} / random"] = [
                {k: float(np.mean([r[i][k] for r in runs])) for k in KS} for i in range(len(FRACTIONS))
            ]
            spread[f"{merge} / random"] = [
                {k: float(np.std([r[i][k] for r in runs])) for k in KS} for i in range(len(FRACTIONS))
            ]
        # the fusion of a backfilled item's two scores, one at a time: the same maps without it, and its search time
        gallery.calibration = dataclasses.replace(cal, fuse=[])
        runs = [curve(gallery, vec, order, "calibrated", s["g_owner"], s["q_owner"]) for order in randoms]
        rows["calibrated without fusion / random"] = [
            {k: float(np.mean([r[i][k] for r in runs])) for k in KS} for i in range(len(FRACTIONS))
        ]
        fusion_time = fusion_search_time(gallery, cal, vec, randoms[0])
        fusion_time_all = fusion_search_time(gallery, cal, vec, randoms[0], fraction=1.0)
        for plan in PLANS[1:]:
            order = plan_order(s["g_old"], plan, model=model)
            gallery.calibration = cal
            rows[f"calibrated / {plan}"] = curve(gallery, vec, order, "calibrated", s["g_owner"], s["q_owner"])
            # the same order, with the map fitted on the mixes that order makes of the pair gallery
            pair_order = plan_order(s["cal"][3], plan, model=model)
            gallery.calibration = fit_calibration(*s["cal_old" if safe else "cal"], order=pair_order)
            rows[f"plan-calibrated / {plan}"] = curve(gallery, vec, order, "calibrated", s["g_owner"], s["q_owner"])
        old_old = recall(search(s["q_old"], s["g_old"], max(KS))[1], s["g_owner"], s["q_owner"])  # no backfill
        new_new = recall(search(s["q_new"], s["g_new"], max(KS))[1], s["g_owner"], s["q_owner"])  # after cutover
        results[direction] = {
            "old_queries": {"path": gallery.old_queries, "reason": gallery.old_queries_reason},
            "old_old": old_old,
            "new_new": new_new,
            "rows": rows,
            "random_order_std": spread,
            "calibration": cal.to_dict(),
            "fusion_search_time": fusion_time,
            "fusion_search_time_at_100": fusion_time_all,
            "disagreement_holdout_spearman": model.holdout_spearman,
            "seconds": round(time.perf_counter() - t1, 1),
        }
        print(f"\n{direction.upper()}: the old part is searched with {gallery.old_queries_reason}")
        print(
            f"(calibration {cal.summary()}; disagreement model "
            f"held-out Spearman {model.holdout_spearman:.3f}; {time.perf_counter() - t1:.0f} s)"
        )
        for at, t in (("50 %", fusion_time), ("100 %", fusion_time_all)):
            print(
                f"search time at {at} with the fusion / without, median of {t['rounds']} alternating rounds: "
                f"{t['ratio']:.2f}x ({t['fused_s']:.3f} s / {t['plain_s']:.3f} s)"
            )
        print("| merge / order | " + " | ".join(f"{int(f * 100)}%" for f in FRACTIONS) + " |  (R@1 / R@10)")
        print("|---" * (len(FRACTIONS) + 1) + "|")
        for name, vals in rows.items():
            print(f"| {name} | " + " | ".join(f"{v[1]:.2f} / {v[10]:.2f}" for v in vals) + " |")
        sd = spread["calibrated / random"]
        print(
            "calibrated / random, std over the random orders: " + " | ".join(f"{v[1]:.2f} / {v[10]:.2f}" for v in sd)
        )
        results[direction]["checks"] = checks(rows, old_old, new_new)
        for line in results[direction]["checks"]["lines"]:
            print("  " + line)
    results["seconds"] = round(time.perf_counter() - t0, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"backfill_{args.world}.json", results)
    plot(results, out / f"backfill_{args.world}.png")
    print(f"\nwrote {out / f'backfill_{args.world}.json'} and .png ({results['seconds']:.0f} s)")
    return 0


def fusion_search_time(
    gallery: MixedGallery, cal, vec, order: np.ndarray, rounds: int = 7, fraction: float = 0.5
) -> dict:
    """Seconds of one calibrated search of all queries at ``fraction`` backfilled, with the calibration's fusion
    and without it, alternating (the median of each, and their ratio): what reading the backfilled candidates' old
    vectors (and, at 100 %, searching with the old-part queries at all) costs a query."""
    gallery.rollback()
    done = order[: round(gallery.size * fraction)]
    gallery.set_new(done, vec["g_new"][done])
    times: dict[str, list[float]] = {"fused": [], "plain": []}
    for _ in range(rounds):
        for name, c in (("fused", cal), ("plain", dataclasses.replace(cal, fuse=[]))):
            gallery.calibration = c
            t = time.perf_counter()
            gallery.search(vec["q_new"], vec["q_ad"], k=max(KS), merge="calibrated")
            times[name].append(time.perf_counter() - t)
    gallery.calibration = cal
    fused, plain = float(np.median(times["fused"])), float(np.median(times["plain"]))
    return {"fused_s": fused, "plain_s": plain, "ratio": fused / plain, "rounds": rounds}


def checks(rows: dict, old_old: dict[int, float], new_new: dict[int, float]) -> dict:
    """The acceptance checks on one direction's rows, as numbers and readable lines.

    The straight line runs from the curve's start (0 %) to new->new, the search after cutover: at 100 % the
    gallery still fuses each item's two scores where the calibration says so, which may end above it.
    """
    cal, naive = rows["calibrated / random"], rows["naive / random"]
    lines, out = [], {}
    for k in KS:
        below_old = {
            f"{int(f * 100)}%": round(c[k] - old_old[k], 2) for f, c in zip(FRACTIONS, cal) if c[k] < old_old[k]
        }
        out[f"R@{k} below old->old"] = below_old
        lines.append(
            f"R@{k}: calibrated "
            + ("never below old->old" if not below_old else f"is BELOW old->old ({old_old[k]:.2f}) at {below_old}")
        )
        lo, hi = cal[0][k], new_new[k]
        line = [lo + f * (hi - lo) for f in FRACTIONS]
        below_line = {
            f"{int(f * 100)}%": round(c[k] - l_, 2) for f, c, l_ in zip(FRACTIONS, cal, line) if c[k] < l_ - 1e-9
        }
        below_naive = {
            f"{int(f * 100)}%": round(c[k] - n[k], 2) for f, c, n in zip(FRACTIONS, cal, naive) if c[k] < n[k] - 1e-9
        }
        out[f"R@{k}"] = {"below_line": below_line, "below_naive": below_naive}
        lines.append(
            f"R@{k}: calibrated "
            + (
                "stays at or above the straight line"
                if not below_line
                else f"is BELOW the straight line at {below_line}"
            )
            + f"; {'never below naive' if not below_naive else f'BELOW naive at {below_naive}'}"
        )
        for name in [r for r in rows if not r.endswith("/ random") and not r.startswith("adapter forced")]:
            gains = {
                f"{int(f * 100)}%": round(rows[name][i][k] - cal[i][k], 2)
                for i, f in enumerate(FRACTIONS)
                if 0.1 <= f <= 0.5
            }
            out[f"R@{k}"][f"{name} minus calibrated / random"] = gains
            lines.append(f"R@{k}: {name} - calibrated / random at 10/25/50%: {gains}")
    out["lines"] = lines
    return out


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    xs = [f * 100 for f in FRACTIONS]
    for col, direction in enumerate(("t2i", "i2t")):
        rows = results[direction]["rows"]
        for row, k in enumerate(KS):
            ax = axes[row, col]
            for name, vals in rows.items():
                style = ":" if name.startswith("plan-calibrated") else "-"
                ax.plot(
                    xs,
                    [v[k] for v in vals],
                    style,
                    marker="o",
                    ms=3,
                    label=name,
                    lw=2.5 if name == "calibrated / random" else 1,
                )
            cal = rows["calibrated / random"]
            ax.plot(
                [0, 100],
                [cal[0][k], results[direction]["new_new"][k]],
                "k--",
                lw=1,
                label="straight line 0 % to new->new",
            )
            ax.axhline(results[direction]["old_old"][k], color="grey", lw=1, ls="-.", label="old->old")
            ax.set_title(f"{direction.upper()} R@{k} ({results['world']})")
            ax.set_xlabel("% of gallery backfilled")
            ax.set_ylabel(f"R@{k} (%)")
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())

"""``xbt demo``: the whole pipeline on the offline toy world, every method in one table.

Loads the shipped toy OLD/NEW CLIPs, fits XBT stage 1 on the text corpus, stage 1+2 on the pair
set (fit embeds the pair images and captions with the old model), the training-free baselines on the same
data, and evaluates them all on the toy test gallery with ``xbt.evaluate``. Runs on 2 CPU cores in
a few minutes.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..baselines.fit import fuse, support_embeddings
from ..core.files import write_json
from ..evaluation.evaluate import evaluate
from ..method.fit import fit
from .worlds import get_world, load_toy

DEMO_TEXTS = 50_000
DEMO_PAIRS = 2_000
DEMO_METHODS = ("procrustes", "linear", "slerp", "nlerp", "xbt-stage1", "xbt-stage1+2", "xbt-stage1+2+slerp")


def run_demo(
    out: str | Path | None = "xbt-demo",
    n_texts: int = DEMO_TEXTS,
    n_pairs: int = DEMO_PAIRS,
    methods: tuple[str, ...] = DEMO_METHODS,
    seed: int = 0,
    verbose: bool = True,
    show: bool = True,
    world: str = "shapes",
):
    """Fit every method in ``methods`` on a toy world and evaluate them in one report.

    Args:
        out: folder for report.json / report.md / report.png (None: write nothing).
        n_texts: stage-1 captions drawn (the corpus; its test-split captions are then left out, see
            ``World.text_memory``).
        n_pairs: image-caption pairs for stage 2 and for the baselines' fusion weights.
        methods: any of "procrustes", "linear", "slerp", "nlerp", "xbt-stage1", "xbt-stage1+2" and
            "xbt-stage1+2+slerp" (SLERP fusion on top of the stage-1+2 adapter; needs it listed before).
        verbose: progress bars and per-method fit times.
        world: the toy world, ``"shapes"`` (default), ``"patterns-wide"`` or ``"patterns"`` (``xbt.toy.get_world``).
        show: print the terminal summary (``Report.to_summary``) and where the full report was saved.

    Returns:
        The ``Report``; its full markdown is report.md in ``out``.
    """
    start = time.perf_counter()
    toy_world = get_world(world)
    old, new = toy_world.load_clips()
    texts = toy_world.text_memory(n_texts)  # no test caption: stage 2 reads these texts as a caption memory
    pairs = toy_world.pairs(n_pairs)
    t0 = time.perf_counter()
    # Embed the corpus and the pair images with both models once, into the embedding cache every fit reads, so
    # the first method's time is its own.
    support_embeddings(old, new, texts, pairs, support="joint", verbose=verbose)
    embed_seconds = round(time.perf_counter() - t0, 1)
    if verbose:
        print(
            f"embedded {len(texts):,} captions and {len(pairs):,} pair images with both models in "
            f"{embed_seconds:.1f}s",
            flush=True,
        )
    adapters, fit_seconds = {}, {}
    for name in methods:
        t0 = time.perf_counter()
        if name == "xbt-stage1":
            adapters[name] = fit(old, new, texts, seed=seed, verbose=verbose)
        elif name == "xbt-stage1+2":
            # Plain fit: it embeds the pair images and captions with the old model itself. Stage 1 is the one
            # fitted above when it was, as a user passes stage1= (the same seed gives the same head either way).
            adapters[name] = fit(
                old, new, texts, pairs=pairs, seed=seed, verbose=verbose, stage1=adapters.get("xbt-stage1")
            ).merge()  # serve merged
        elif name == "xbt-stage1+2+slerp":
            adapters[name] = fuse(
                adapters["xbt-stage1+2"], old, pairs=pairs, kind="slerp", method=name, verbose=verbose
            )
        else:
            adapters[name] = fit(old, new, texts, pairs=pairs, method=name, seed=seed, verbose=verbose)
        fit_seconds[name] = round(time.perf_counter() - t0, 1)
        if verbose:
            print(f"fitted {name} in {fit_seconds[name]:.1f}s", flush=True)
    # the ceiling row: the best a query reaches through the frozen old gallery (recorded with the world's models)
    report = evaluate(old, adapters, dataset=load_toy(world=world), verbose=verbose, ceiling=toy_world.ceiling())
    wall = round(time.perf_counter() - start, 1)
    if show:
        print()
        print(report.to_summary())
        print(f"embedding {embed_seconds:.0f}s, fits {sum(fit_seconds.values()):.0f}s, demo wall time {wall:.0f}s")
    if out is not None:
        folder = report.save(out)
        write_json(
            Path(folder) / "demo_timing.json",
            {
                "world": world,
                "embed_seconds": embed_seconds,
                "fit_seconds": fit_seconds,
                "wall_seconds": wall,
                "n_texts": n_texts,
                "n_pairs": n_pairs,
            },
        )
        if show:
            print(f"full table (flips, gap closure, query cost) in {folder}/report.md; also report.json, report.png")
    return report

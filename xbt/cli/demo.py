"""``xbt demo``: the whole pipeline offline on a toy world, and its comparison table."""

from __future__ import annotations

import argparse

from ..core.errors import XBTError
from ..toy.demo import run_demo
from ..toy.splits import MAX_PAIRS
from ..toy.worlds import WORLDS


def register(p: argparse.ArgumentParser) -> None:
    """Fill in the ``xbt demo`` parser that ``xbt.cli`` made with its one-line help."""
    p.description = (
        "Fit Procrustes, ridge linear, SLERP, NLERP, XBT stage 1, XBT stage 1+2 and SLERP on top of XBT "
        "on the shipped toy CLIPs and evaluate them all on the toy test gallery (a few minutes on 2 CPU cores, "
        "no download)."
    )
    p.add_argument(
        "--out", default="xbt-demo", help="folder for report.json, report.md, report.png (default: xbt-demo)"
    )
    p.add_argument("--world", default="shapes", choices=sorted(WORLDS), help="toy world (default: shapes)")
    p.add_argument("--texts", type=int, default=50_000, help="stage-1 caption corpus size")
    p.add_argument("--pairs", type=int, default=2_000, help="image-caption pairs for stage 2 and SLERP's weights")
    p.add_argument("--seed", type=int, default=0, help="seed of every fit (default 0): the same seed, the same table")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args) -> int:
    """``xbt demo``; the counts are checked first, so a typo is refused at once and not minutes in."""
    if args.texts < 2:
        raise XBTError(f"--texts must be >= 2 (stage 1 contrasts captions), got {args.texts}; the default is 50000")
    if not 4 <= args.pairs <= MAX_PAIRS:
        raise XBTError(
            f"--pairs must be between 4 (stage 2 contrasts pairs) and {MAX_PAIRS} (the toy pair set), got {args.pairs}"
        )
    run_demo(
        out=args.out, n_texts=args.texts, n_pairs=args.pairs, seed=args.seed, verbose=not args.quiet, world=args.world
    )
    return 0

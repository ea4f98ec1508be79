"""``xbt demo``: the whole pipeline offline on a toy world, and its comparison table."""

from __future__ import annotations

from ..toy.demo import run_demo


def register(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="run the whole pipeline offline on the toy world and print the comparison table",
        description="Fit Procrustes, ridge linear, SLERP, NLERP, XBT stage 1, XBT stage 1+2 and SLERP on top of XBT "
        "on the shipped toy CLIPs and evaluate them all on the toy test gallery (a few minutes on 2 CPU cores, "
        "no download).",
    )
    p.add_argument(
        "--out", default="xbt-demo", help="folder for report.json, report.md, report.png (default: xbt-demo)"
    )
    p.add_argument("--world", default="shapes", choices=["shapes", "patterns"], help="toy world (default: shapes)")
    p.add_argument("--texts", type=int, default=50_000, help="stage-1 caption corpus size")
    p.add_argument("--pairs", type=int, default=2_000, help="image-caption pairs for stage 2 and SLERP's weights")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args) -> int:
    run_demo(
        out=args.out, n_texts=args.texts, n_pairs=args.pairs, seed=args.seed, verbose=not args.quiet, world=args.world
    )
    return 0

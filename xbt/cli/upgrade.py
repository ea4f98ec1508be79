"""``xbt gallery upgrade``: move a gallery's stored OLD vectors into the NEW space with a forward map, resumably.

Registered under ``xbt gallery`` (``gallery.register`` calls ``register_action``). The vectors are a ``.npy``
file read memory-mapped, so a gallery of any size upgrades in bounded memory; an interrupted run resumes
(``forward.job.UpgradeJob``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.errors import XBTError
from ..forward.job import UpgradeJob
from ..forward.map import MODALITIES, ForwardMap


def register_action(gsub) -> None:
    """Add the ``upgrade`` action to the ``xbt gallery`` sub-parsers."""
    u = gsub.add_parser(
        "upgrade",
        help="move the stored OLD vectors into the NEW space with a forward map (resumable, no image needed)",
        description="Upgrade the OLD vectors in --vectors (a .npy file, float32 [n, d_old], read memory-mapped) "
        "with the forward map in --map (xbt.fit_forward(...).save) into --out: upgraded.npy, states.npy (each "
        "vector's state) and upgrade.json (the map's id, the batches done). An interrupted run resumes where it "
        "stopped; another map or other vectors are refused there.",
    )
    u.add_argument("--vectors", required=True, metavar="FILE.npy", help="the gallery's OLD vectors (numpy.save)")
    u.add_argument("--modality", required=True, choices=MODALITIES, help="what the vectors embed: text or image")
    u.add_argument("--map", required=True, metavar="DIR", help="forward map folder (ForwardMap.save)")
    u.add_argument("--out", required=True, metavar="DIR", help="folder to write the upgraded vectors to")
    u.add_argument("--batch-size", type=int, default=65_536, metavar="N", help="vectors per batch (default 65536)")
    u.add_argument("--quiet", action="store_true", help="no progress bar")
    u.set_defaults(func=_upgrade)


def _upgrade(args: argparse.Namespace) -> int:
    if Path(args.out).is_file():
        raise XBTError(f"--out {args.out} is a file; give a folder (new, or one an earlier upgrade wrote)")
    fmap = ForwardMap.load(args.map)
    result = UpgradeJob(args.out, args.vectors, fmap, args.modality, args.batch_size).run(verbose=not args.quiet)
    rate = result["vectors_per_second"]
    print(
        f"upgraded {result['source']['shape'][0]} {args.modality} vectors with forward map {result['map_id']} into "
        f"{args.out}" + (f" ({rate:,.0f} vectors/s this run)" if rate else " (nothing left to do)")
    )
    return 0

"""``xbt toy``: the shipped toy models by world, and toy data files to try every other command on.

``xbt toy models`` lists each world's OLD and NEW model names (what ``--old`` / ``--new`` take) with
their recorded Recall@1 and ceiling. ``xbt toy data --out DIR`` writes, atomically, what the other
commands read: ``texts.txt`` (``xbt fit --texts``), ``pairs/`` (a ``datasets`` folder with ``image`` and
``caption`` columns, ``--pairs``), ``images/`` and ``captions.txt`` (a gallery: ``xbt gallery build
--images`` / ``--texts``), and prints the commands that use them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.errors import XBTError
from ..core.files import atomic_path
from ..toy.splits import MAX_PAIRS, TEST_IMAGES
from ..toy.worlds import WORLDS


def register(p: argparse.ArgumentParser) -> None:
    """Fill in the ``xbt toy`` parser that ``xbt.cli`` made with its one-line help."""
    p.description = (
        "The offline toy worlds: list their shipped CLIPs (names for --old / --new), or write toy "
        "texts, pairs and gallery files in the formats the other commands read."
    )
    tsub = p.add_subparsers(dest="toy_command", metavar="WHAT", required=True)
    m = tsub.add_parser(
        "models",
        help="list each toy world's OLD and NEW model names with their recorded R@1",
        description="List each toy world's OLD and NEW model names (give them to --old / --new of fit, eval, "
        "gallery) with the test Recall@1 their training recorded and the world's recorded ceiling.",
    )
    m.set_defaults(func=_models)
    d = tsub.add_parser(
        "data",
        help="write toy texts.txt, pairs/, images/ and captions.txt to try fit, eval and gallery on",
        description="Write a toy world's stage-1 captions (texts.txt), image-caption pairs (pairs/, a datasets "
        "folder) and a small gallery (images/*.png, captions.txt) into --out, then print commands that use them.",
    )
    d.add_argument("--out", required=True, help="folder to write into (replaced atomically if it exists)")
    d.add_argument("--world", default="shapes", choices=sorted(WORLDS), help="toy world (default: shapes)")
    d.add_argument("--texts", type=int, default=20_000, metavar="N", help="stage-1 captions (default 20000)")
    d.add_argument(
        "--pairs", type=int, default=500, metavar="N", help=f"pair images, at most {MAX_PAIRS} (default 500)"
    )
    d.add_argument(
        "--captions-per-image", type=int, default=5, choices=(1, 5), help="captions per pair image (default 5)"
    )
    d.add_argument(
        "--gallery", type=int, default=200, metavar="N", help=f"gallery images, at most {TEST_IMAGES} (default 200)"
    )
    d.set_defaults(func=_data)


def _models(args: argparse.Namespace) -> int:
    """Print one line per world: its OLD and NEW model names, their recorded R@1 and the ceiling."""
    print(f"{'world':<14} {'--old':<22} {'--new':<22} R@1 I2T / T2I (old, new; ceiling)")
    for name, world in WORLDS.items():
        rec = world.recorded_metrics()
        ceiling = world.ceiling()
        figures = "; ".join(f"{rec[w]['i2t_r1']:.1f} / {rec[w]['t2i_r1']:.1f}" for w in ("old", "new") if w in rec)
        if ceiling:
            figures += f"; ceiling {100 * ceiling['i2t'][1]:.1f} / {100 * ceiling['t2i'][1]:.1f}"
        print(f"{name:<14} {world.old_model:<22} {world.new_model:<22} {figures}")
    print("\nload in Python: xbt.toy.get_world(NAME).load_clips(); try them: xbt toy data --out toy-data")
    return 0


def _data(args: argparse.Namespace) -> int:
    """Write the toy files into ``--out`` (one atomic swap) and print the commands that read them."""
    if args.texts < 2:
        raise XBTError(f"--texts must be >= 2 (stage 1 contrasts captions), got {args.texts}")
    if not 4 <= args.pairs <= MAX_PAIRS:
        raise XBTError(f"--pairs must be between 4 and {MAX_PAIRS} (the toy pair set), got {args.pairs}")
    if not 1 <= args.gallery <= TEST_IMAGES:
        raise XBTError(f"--gallery must be between 1 and {TEST_IMAGES} (the toy test split), got {args.gallery}")
    world = WORLDS[args.world]
    out = Path(args.out)
    texts = world.text_corpus(args.texts)
    with atomic_path(out, folder=True, owned=("texts.txt", "pairs", "images", "captions.txt")) as tmp:
        (tmp / "texts.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
        world.pairs(args.pairs, captions_per_image=args.captions_per_image).save_to_disk(str(tmp / "pairs"))
        images, captions = world.test_split(args.gallery)
        (tmp / "images").mkdir()
        for i, image in enumerate(images):
            image.save(tmp / "images" / f"{i:05d}.png")
        (tmp / "captions.txt").write_text("\n".join(c for cs in captions for c in cs) + "\n", encoding="utf-8")
    old, new = world.old_model, world.new_model
    print(
        f"wrote {out}/: texts.txt ({len(texts):,} captions, {len(set(texts)):,} distinct), "
        f"pairs/ ({args.pairs} images x {args.captions_per_image} caption(s)), images/ ({len(images)} PNG), "
        f"captions.txt ({len(images) * 5:,})\n"
        "try:\n"
        f"  xbt fit --old {old} --new {new} --texts {out}/texts.txt --pairs {out}/pairs --out {out}/adapter\n"
        f"  xbt eval --old {old} --adapter {out}/adapter --dataset toy"
        + (f" --world {args.world}" if args.world != "shapes" else "")
        + "\n"
        f"  xbt gallery build --gallery {out}/gallery --old {old} --adapter {out}/adapter --images {out}/images "
        f"--pairs {out}/pairs\n"
        f'  xbt gallery search --gallery {out}/gallery --adapter {out}/adapter --query "{texts[0]}"'
    )
    return 0

"""``xbt fit``: fit an adapter from a caption file (and pairs), save it, optionally push it.

The method options are generated from the option dataclasses (``add_option_flags``): stage-1
options as ``--stage1-<name>``, stage-2 options as ``--stage2-<name>`` (both stages have
``epochs``, ``lr``...), the training-free methods' options as ``--<name>``; only the flags given
are passed on, so the dataclass defaults stay the one source of defaults.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..adapters.hub import push_folder
from ..baselines.config import BASELINE_OPTIONS, BaselineConfig
from ..core.errors import XBTError
from ..data.pairs import read_pairs_folder
from ..method.config import Stage1Config, Stage2Config
from ..method.fit import METHODS, fit
from .common import add_option_flags, check_repo_id, given_options, load_model, load_vectors


def register(p: argparse.ArgumentParser) -> None:
    """Fill in the ``xbt fit`` parser that ``xbt.cli`` made with its one-line help."""
    p.description = (
        "Fit an adapter mapping the NEW model's embeddings into the OLD model's space from a text file "
        "of captions (one per line), optionally with image-caption pairs, and save it with save_pretrained."
    )
    p.add_argument("--old", required=True, help="old model: open_clip name, hf:<id>, toy name, or a local-dir folder")
    p.add_argument(
        "--old-pretrained", metavar="TAG", default=None, help="open_clip pretrained tag of --old (e.g. openai)"
    )
    p.add_argument("--new", required=True, help="new model: open_clip name, hf:<id>, toy name, or a local-dir folder")
    p.add_argument(
        "--new-pretrained", metavar="TAG", default=None, help="open_clip pretrained tag of --new (e.g. openai)"
    )
    p.add_argument(
        "--texts", required=True, metavar="FILE", help="UTF-8 text file, one caption per line (blank lines skipped)"
    )
    p.add_argument(
        "--pairs",
        metavar="FOLDER",
        default=None,
        help="a folder saved by datasets.Dataset.save_to_disk with image and caption columns",
    )
    p.add_argument(
        "--method",
        default="xbt",
        choices=METHODS,
        help="xbt (trained: stage 1, and stage 2 with --pairs) or a training-free map / query fusion (default xbt)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice: the same seed, the same adapter")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: CUDA when present)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    p.add_argument(
        "--old-image-embeddings",
        metavar="FILE",
        default=None,
        help="(xbt) OLD-model vectors of the pair images, in pair order: .safetensors or .npy [n_pairs, d_old]",
    )
    p.add_argument(
        "--checkpoint-dir",
        metavar="FOLDER",
        default=None,
        help="(xbt) checkpoint stage 2 here after every epoch; resume a matching run",
    )
    p.add_argument(
        "--no-stage1", action="store_true", help="(xbt) skip the text-only stage 1 (needs --old-image-embeddings)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace a different adapter already in --out")
    p.add_argument("--out", required=True, metavar="FOLDER", help="folder to save the adapter in")
    p.add_argument("--push-to-hub", metavar="REPO", default=None, help="also upload the saved folder to this Hub repo")
    p.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")
    p.add_argument("--token", default=None, help="with --push-to-hub: Hub token (default: the logged-in one)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    dests = {
        "stage1": add_option_flags(p, Stage1Config, "stage1", exclude=("seed",)),
        "stage2": add_option_flags(p, Stage2Config, "stage2", exclude=("seed",)),
        "baseline": add_option_flags(p, BaselineConfig),
    }
    p.set_defaults(func=run, option_dests=dests)


def run(args: argparse.Namespace) -> int:
    """``xbt fit``: read the captions (and pairs), fit, save (and push)."""
    if args.push_to_hub:  # before any work: a bad repo id would only fail after the fit
        check_repo_id(args.push_to_hub, "--push-to-hub")
    stage1, stage2, baseline = (given_options(args, args.option_dests[k]) for k in ("stage1", "stage2", "baseline"))
    flags = {"stage1": sorted(stage1), "baseline": sorted(baseline)}
    if args.method == "xbt" and baseline:
        raise XBTError(
            f"options {flags['baseline']} apply to the training-free methods {list(BASELINE_OPTIONS)}, not to method "
            "'xbt'"
        )
    if args.method != "xbt" and stage1:
        raise XBTError(
            f"--stage1-* options {flags['stage1']} apply to method 'xbt' only, not to method {args.method!r}"
        )
    path = Path(args.texts)
    if not path.is_file():
        raise XBTError(f"--texts {path} does not exist; give a UTF-8 text file with one caption per line")
    texts = path  # read lazily, line by line (xbt.stream): a caption file larger than memory is fine
    pairs = None
    if args.pairs:
        pairs = read_pairs_folder(args.pairs)
    xbt_options: dict[str, Any] = {}
    if stage2:
        xbt_options["stage2"] = stage2
    if args.old_image_embeddings:
        xbt_options["old_image_embeddings"] = load_vectors(args.old_image_embeddings)
    if args.checkpoint_dir:
        xbt_options["checkpoint_dir"] = args.checkpoint_dir
    if args.no_stage1:
        xbt_options["use_stage1"] = False
    old = load_model(args.old, args.old_pretrained, args.device)
    new = load_model(args.new, args.new_pretrained, args.device)
    adapter = fit(
        old,
        new,
        texts,
        pairs=pairs,
        method=args.method,
        seed=args.seed,
        device=args.device,
        cache=False if args.no_cache else None,
        verbose=not args.quiet,
        **xbt_options,
        **stage1,
        **baseline,
    )
    out = adapter.save_pretrained(args.out, overwrite=args.overwrite, repo_id=args.push_to_hub)
    print(f"saved {adapter!r} to {out}")
    for v in adapter.verdicts().values():  # the verdict on held-out pairs: what the card and a gallery go by
        print(f"backward compatible? {v.sentence()}")
        if v.compatible is False:
            print(
                f"  so xbt gallery build searches the old part with the OLD model's {v.modality} queries "
                "(--old-queries adapter overrides, with a warning)"
            )
    if args.push_to_hub:
        url = push_folder(out, args.push_to_hub, private=args.private, token=args.token)
        print(f"pushed {out} to {url}")
    return 0

"""``xbt eval`` and ``xbt advise``: judge an upgrade. ``eval`` measures adapters on a retrieval dataset and writes
the report; ``advise`` predicts from texts alone, before any pair or training, whether an adapter will be
backward compatible (``xbt.advise``)."""

from __future__ import annotations

import argparse

from ..core.errors import XBTError
from ..evaluation.evaluate import evaluate
from .common import adapter_spec, load_adapters, load_model, new_from_adapter_config


def register(p: argparse.ArgumentParser) -> None:
    """Fill in the ``xbt eval`` parser that ``xbt.cli`` made with its one-line help."""
    p.description = "Evaluate upgrade adapters on a retrieval dataset and write report.json, report.md and report.png."
    p.add_argument("--old", required=True, help="old model: open_clip name, hf:<id>, toy name, or a local-dir folder")
    p.add_argument("--old-pretrained", default=None, help="open_clip pretrained tag of the old model (e.g. openai)")
    p.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="[NAME=]FOLDER_OR_REPO",
        help="adapter folder or Hub repo; repeat to compare several methods in one report",
    )
    p.add_argument("--new", default=None, help="new model (default: the one named in the adapter's config)")
    p.add_argument("--new-pretrained", default=None, help="open_clip pretrained tag of the new model")
    p.add_argument("--dataset", default="toy", help="toy | flickr30k | coco | nocaps (default toy)")
    p.add_argument(
        "--world",
        default=None,
        help="with --dataset toy: the toy world (shapes, patterns-wide, patterns; default shapes; xbt toy models)",
    )
    p.add_argument(
        "--split", default=None, help="test (1K Flickr / 5K COCO), full, val, ... (default test; nocaps: val)"
    )
    p.add_argument(
        "--root", default=None, help="folder with the dataset files (local) or a downloaded webdataset copy (hf)"
    )
    p.add_argument("--source", default="local", choices=("local", "hf"), help="local files or Hugging Face webdataset")
    p.add_argument("--limit", type=int, default=None, help="use only the first N images (quick runs)")
    p.add_argument("--ks", type=int, nargs="+", default=[1, 5, 10], help="K values of Recall@K (default 1 5 10)")
    p.add_argument(
        "--index",
        default="flat",
        choices=("flat", "block", "ivf"),
        help="search: flat (faiss, exact), block (exact, bounded memory) or ivf",
    )
    p.add_argument("--nprobe", type=int, default=None, help="IVF cells visited per query (default min(nlist, 16))")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: CUDA when present)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    p.add_argument(
        "--no-query-cost", action="store_true", help="skip timing the query path against the bare new model"
    )
    p.add_argument(
        "--no-fingerprint-check",
        action="store_true",
        help="accept models whose weights differ from those the adapters recorded (e.g. another precision)",
    )
    p.add_argument("--out", default="xbt-eval", help="output folder for report.json/.md/.png (default ./xbt-eval)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """``xbt eval``: load the models and adapters, evaluate, print the markdown, save the report."""
    if not args.adapter and not args.new:
        raise XBTError("give --adapter FOLDER (new→old) and/or --new MODEL (new→new only)")
    if args.world is not None and args.dataset != "toy":
        raise XBTError(f"--world {args.world!r} applies to --dataset toy only, not to {args.dataset!r}; drop it")
    old = load_model(args.old, args.old_pretrained, args.device)
    new = (
        load_model(args.new, args.new_pretrained, args.device)
        if args.new
        else new_from_adapter_config(adapter_spec(args.adapter[0])[1], args.device)
    )
    check = not args.no_fingerprint_check
    upgraded = load_adapters(args.adapter, new, old, check) if args.adapter else new
    report = evaluate(
        old,
        upgraded,
        dataset=args.dataset,
        split=args.split,
        root=args.root,
        source=args.source,
        limit=args.limit,
        **({"world": args.world} if args.world is not None else {}),
        ks=args.ks,
        index=args.index,
        nprobe=args.nprobe,
        cache=False if args.no_cache else None,
        device=args.device,
        query_cost=not args.no_query_cost,
        verbose=not args.quiet,
        check_fingerprint=check,
    )
    out = report.save(args.out)
    print(report.to_markdown())
    print(f"wrote {out / 'report.json'}, {out / 'report.md'}, {out / 'report.png'}")
    return 0


def register_advise(p: argparse.ArgumentParser) -> None:
    """Fill in the ``xbt advise`` parser."""
    p.description = (
        "Predict from a caption file alone whether an adapter from --new to --old will be backward compatible "
        "(per direction, with a range), and what to do: the adapter alone, with a partial backfill, or keep the "
        "old model's queries until a backfill. Embeds the captions with both text towers; writes nothing "
        "unless --json is given."
    )
    p.add_argument("--old", required=True, help="old model: open_clip name, hf:<id>, toy name, or a local-dir folder")
    p.add_argument("--old-pretrained", default=None, help="open_clip pretrained tag of the old model")
    p.add_argument("--new", required=True, help="new model, as --old")
    p.add_argument("--new-pretrained", default=None, help="open_clip pretrained tag of the new model")
    p.add_argument("--texts", required=True, metavar="FILE", help="captions like the gallery's, one a line (~50k)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the advice as JSON")
    p.add_argument("--device", default=None, help="torch device: cpu, cuda, mps")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_advise)


def _advise(args) -> int:
    from pathlib import Path

    from ..advisor.advice import advise
    from ..core.files import write_json

    texts = Path(args.texts)
    if not texts.is_file():
        raise XBTError(f"--texts {texts} does not exist; give a UTF-8 text file with one caption per line")
    old = load_model(args.old, args.old_pretrained, args.device)
    new = load_model(args.new, args.new_pretrained, args.device)
    advice = advise(old, new, texts, verbose=not args.quiet)
    print(advice.summary())
    if args.json:
        write_json(args.json, advice.to_dict())
    return 0

"""The ``xbt`` command.

Each subcommand is a function decorated with ``@subcommand`` that adds its parser to the
subparsers object and sets ``func`` (called with the parsed args; returns the exit status).
To add one (``demo``, ``fit``, ``push``)::

    @subcommand
    def _demo(sub):
        p = sub.add_parser("demo", help="...")
        p.add_argument(...)
        p.set_defaults(func=run_demo)

Errors of type ``XBTError`` are printed as ``xbt <cmd>: error: ...`` with exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .errors import XBTError

_SUBCOMMANDS: list[Callable[[Any], None]] = []


def subcommand(add: Callable[[Any], None]) -> Callable[[Any], None]:
    """Register ``add(subparsers)``, which adds one subcommand's parser; returns ``add`` unchanged."""
    _SUBCOMMANDS.append(add)
    return add


# ---------------------------------------------------------------------- shared helpers


def load_model(spec: str, pretrained: str | None = None, device: str | None = None):
    """A ``CLIPEncoder`` from a CLI model spec: an existing folder is an open_clip ``local-dir``,
    anything else goes to ``xbt.load_clip`` (open_clip name, ``hf:<id>``, toy name)."""
    from .encoders import load_clip

    if Path(spec).expanduser().is_dir():
        return load_clip(f"local-dir:{Path(spec).expanduser()}", device=device)
    try:
        return load_clip(spec, pretrained=pretrained, device=device)
    except XBTError:
        raise
    except Exception as exc:  # unknown name, missing weights, no network
        raise XBTError(f"cannot load model {spec!r} (pretrained={pretrained!r}): {type(exc).__name__}: {exc}") from exc


def _new_from_adapter_config(folder: str, device: str | None):
    """Load the new model named in an adapter's config (for ``--adapter`` without ``--new``)."""
    from .adapter import _read_config, _resolve

    config = _read_config(_resolve(folder, None), strict=True)
    name = str(config.get("new_model", {}).get("name") or "")
    if not name:
        raise XBTError(f"adapter {folder} does not name its new model; pass --new NAME [--new-pretrained TAG]")
    try:
        if "/" in name and not name.startswith(("hf:", "local-dir:")):
            arch, tag = name.rsplit("/", 1)
            return load_model(arch, tag, device)
        return load_model(name, None, device)
    except XBTError as exc:
        raise XBTError(f"{exc}; the adapter's config names its new model {name!r}: pass --new NAME [--new-pretrained TAG]") from exc


def load_adapter(path: str, new, old):
    """Load the adapter at ``path`` (folder or Hub repo) with the class its config asks for.

    Query-fusion adapters (config ``requires_old_encoder``) also need the old model.
    """
    from .adapter import Adapter, _read_config, _resolve

    config = _read_config(_resolve(path, None), strict=True)
    if config.get("requires_old_encoder") or "fusion" in config:
        from .baselines import FusionAdapter

        return FusionAdapter.from_pretrained(path, new=new, old=old)
    return Adapter.from_pretrained(path, new=new)


def _load_adapters(specs: list[str], new, old) -> dict[str, Any]:
    """``NAME=FOLDER`` or ``FOLDER`` (named by its method) -> loaded adapters, in order."""
    out: dict[str, Any] = {}
    for spec in specs:
        name, _, path = spec.partition("=") if "=" in spec and not Path(spec).exists() else ("", "", spec)
        adapter = load_adapter(path, new, old)
        label = name or adapter.method
        if label in out:
            label = f"{label} ({Path(path).name})"
        out[label] = adapter
    return out


# ---------------------------------------------------------------------- eval


@subcommand
def _eval_parser(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate an adapter: old→old, new→old, new→new Recall@K, flips, verdict",
        description="Evaluate upgrade adapters on a retrieval dataset and write report.json, report.md and report.png.",
    )
    p.add_argument("--old", required=True, help="old model: open_clip name, hf:<id>, toy name, or a local-dir folder")
    p.add_argument("--old-pretrained", default=None, help="open_clip pretrained tag of the old model (e.g. openai)")
    p.add_argument("--adapter", action="append", default=[], metavar="[NAME=]FOLDER_OR_REPO",
                   help="adapter folder or Hub repo; repeat to compare several methods in one report")
    p.add_argument("--new", default=None, help="new model (default: the one named in the adapter's config)")
    p.add_argument("--new-pretrained", default=None, help="open_clip pretrained tag of the new model")
    p.add_argument("--dataset", default="toy", help="toy | flickr30k | coco | nocaps (default toy)")
    p.add_argument("--split", default=None, help="test (1K Flickr / 5K COCO), full, val, ... (default test; nocaps: val)")
    p.add_argument("--root", default=None, help="folder with the dataset files (local) or a downloaded webdataset copy (hf)")
    p.add_argument("--source", default="local", choices=("local", "hf"), help="local files or Hugging Face webdataset")
    p.add_argument("--limit", type=int, default=None, help="use only the first N images (quick runs)")
    p.add_argument("--ks", type=int, nargs="+", default=[1, 5, 10], help="K values of Recall@K (default 1 5 10)")
    p.add_argument("--index", default="flat", choices=("flat", "ivf"), help="faiss index: flat (exact) or ivf")
    p.add_argument("--nprobe", type=int, default=None, help="IVF cells visited per query (default min(nlist, 16))")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: CUDA when present)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    p.add_argument("--no-query-cost", action="store_true", help="skip timing the query path against the bare new model")
    p.add_argument("--out", default="xbt-eval", help="output folder for report.json/.md/.png (default ./xbt-eval)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    """``xbt eval``: load the models and adapters, evaluate, print the markdown, save the report."""
    from .evaluate import evaluate

    if not args.adapter and not args.new:
        raise XBTError("give --adapter FOLDER (new→old) and/or --new MODEL (new→new only)")
    old = load_model(args.old, args.old_pretrained, args.device)
    if args.new:
        new = load_model(args.new, args.new_pretrained, args.device)
    else:
        new = _new_from_adapter_config(args.adapter[0], args.device)
    upgraded = _load_adapters(args.adapter, new, old) if args.adapter else new
    report = evaluate(
        old, upgraded, dataset=args.dataset, split=args.split, root=args.root, source=args.source, limit=args.limit,
        ks=args.ks, index=args.index, nprobe=args.nprobe, cache=False if args.no_cache else None, device=args.device,
        query_cost=not args.no_query_cost, verbose=not args.quiet,
    )
    out = report.save(args.out)
    print(report.to_markdown())
    print(f"wrote {out / 'report.json'}, {out / 'report.md'}, {out / 'report.png'}")
    return 0


# ---------------------------------------------------------------------- entry point


def build_parser() -> argparse.ArgumentParser:
    """The ``xbt`` argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(prog="xbt", description="Upgrade a CLIP model without re-embedding the gallery.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"xbt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``xbt`` command with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except XBTError as exc:
        print(f"xbt {args.command}: error: {exc}", file=sys.stderr)
        return 2



@subcommand
def _demo(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="run the whole pipeline offline on the toy world and print the comparison table",
        description="Fit Procrustes, ridge linear, SLERP, NLERP, XBT stage 1, XBT stage 1+2 and SLERP on top of XBT "
        "on the shipped toy CLIPs and evaluate them all on the toy test gallery (a few minutes on 2 CPU cores, "
        "no download).",
    )
    p.add_argument("--out", default="xbt-demo", help="folder for report.json, report.md, report.png (default: xbt-demo)")
    p.add_argument("--texts", type=int, default=50_000, help="stage-1 caption corpus size")
    p.add_argument("--pairs", type=int, default=2_000, help="image-caption pairs for stage 2 and SLERP's weights")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_demo)


def _run_demo(args) -> int:
    from .demo import run_demo

    run_demo(out=args.out, n_texts=args.texts, n_pairs=args.pairs, seed=args.seed, verbose=not args.quiet)
    return 0


@subcommand
def _fit(sub) -> None:
    p = sub.add_parser(
        "fit",
        help="fit an adapter (XBT or a baseline) from a caption file and save it",
        description="Fit an adapter mapping the NEW model's embeddings into the OLD model's space from a text file "
        "of captions (one per line), optionally with image-caption pairs, and save it with save_pretrained.",
    )
    p.add_argument("--old", required=True, help="old model: open_clip name, hf:<id>, toy name, or a local-dir folder")
    p.add_argument("--old-pretrained", default=None)
    p.add_argument("--new", required=True, help="new model: open_clip name, hf:<id>, toy name, or a local-dir folder")
    p.add_argument("--new-pretrained", default=None)
    p.add_argument("--texts", required=True, help="UTF-8 text file, one caption per line (blank lines skipped)")
    p.add_argument("--pairs", default=None, help="a folder saved by datasets.Dataset.save_to_disk with image and caption columns")
    p.add_argument("--method", default="xbt", help="xbt | procrustes | linear | slerp | nlerp")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--overwrite", action="store_true", help="replace a different adapter already in --out")
    p.add_argument("--out", required=True, help="folder to save the adapter in")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_fit)


def _run_fit(args) -> int:
    from .fit import fit

    path = Path(args.texts)
    if not path.is_file():
        raise XBTError(f"--texts {path} does not exist; give a UTF-8 text file with one caption per line")
    texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    pairs = None
    if args.pairs:
        import datasets

        try:
            pairs = datasets.load_from_disk(args.pairs)
        except FileNotFoundError as exc:
            raise XBTError(f"--pairs {args.pairs} is not a folder written by datasets.Dataset.save_to_disk ({exc})") from exc
    old = load_model(args.old, args.old_pretrained, args.device)
    new = load_model(args.new, args.new_pretrained, args.device)
    adapter = fit(old, new, texts, pairs=pairs, method=args.method, seed=args.seed, device=args.device, verbose=not args.quiet)
    out = adapter.save_pretrained(args.out, overwrite=args.overwrite)
    print(f"saved {adapter!r} to {out}")
    return 0


@subcommand
def _push(sub) -> None:
    p = sub.add_parser("push", help="upload a saved adapter folder to the Hugging Face Hub with a model card")
    p.add_argument("--adapter", required=True, help="folder written by save_pretrained / xbt fit")
    p.add_argument("--repo", required=True, help="Hub repo id, e.g. org/xbt-l14-to-b32")
    p.add_argument("--private", action="store_true")
    p.add_argument("--token", default=None, help="Hub token (default: the logged-in one)")
    p.set_defaults(func=_run_push)


def _run_push(args) -> int:
    from .adapter import push_folder

    url = push_folder(args.adapter, args.repo, private=args.private, token=args.token)
    print(f"pushed {args.adapter} to {url}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

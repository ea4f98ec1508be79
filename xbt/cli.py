"""The ``xbt`` command: ``eval``, ``demo``, ``fit``, ``push`` and ``gallery`` (``xbt.gallery_commands``).

Each subcommand is a function decorated with ``@subcommand`` that adds its parser to the
subparsers object and sets ``func`` (called with the parsed args; returns the exit status).
``xbt fit``'s method options are generated from the option dataclasses (``add_option_flags``):
stage-1 options as ``--stage1-<name>``, stage-2 options as ``--stage2-<name>`` (both stages have
``epochs``, ``lr``...), the training-free methods' options as ``--<name>``; only the flags given
are passed on, so the dataclass defaults stay the one source of defaults.

Errors of type ``XBTError`` are printed as ``xbt <cmd>: error: ...`` with exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import toy
from .adapter import load_adapter
from .adapter_config import read_config
from .app import app_arguments, serve
from .config import BASELINE_OPTIONS, BaselineConfig, Stage1Config, Stage2Config
from .demo import run_demo
from .encoders import CLIPEncoder, load_clip
from .errors import XBTError
from .evaluate import evaluate
from .export import EXPORT_FORMATS
from .fit import METHODS, fit
from .gallery_commands import register as register_gallery
from .hub import push_folder, resolve
from .version import __version__

_SUBCOMMANDS: list[Callable[[Any], None]] = []


def subcommand(add: Callable[[Any], None]) -> Callable[[Any], None]:
    """Register ``add(subparsers)``, which adds one subcommand's parser; returns ``add`` unchanged."""
    _SUBCOMMANDS.append(add)
    return add


# ---------------------------------------------------------------------- shared helpers


def load_model(spec: str, pretrained: str | None = None, device: str | None = None, revision: str | None = None) -> CLIPEncoder:
    """A ``CLIPEncoder`` from a CLI model spec: an existing folder is an open_clip ``local-dir``, a toy
    name (``xbt.toy.MODEL_NAMES``) a shipped toy model, anything else goes to ``xbt.load_clip``."""
    if Path(spec).expanduser().is_dir():
        return load_clip(f"local-dir:{Path(spec).expanduser()}", device=device)
    if spec in toy.MODEL_NAMES:
        return toy.load_model(spec, device=device)
    try:
        return load_clip(spec, pretrained=pretrained, device=device, revision=revision)
    except XBTError:
        raise
    except Exception as exc:  # unknown name, missing weights, no network
        raise XBTError(f"cannot load model {spec!r} (pretrained={pretrained!r}): {type(exc).__name__}: {exc}") from exc


def _new_from_adapter_config(path: str, device: str | None) -> CLIPEncoder:
    """Load the new model named in an adapter's config (for ``--adapter`` without ``--new``)."""
    ref = read_config(resolve(path)).new_model
    try:
        return load_model(ref.name, ref.pretrained, device, ref.revision)
    except XBTError as exc:
        raise XBTError(f"{exc}; the adapter's config names its new model {ref.label!r}: pass --new NAME [--new-pretrained TAG]") from exc


def _load_adapters(specs: list[str], new, old, check_fingerprint: bool) -> dict[str, Any]:
    """``NAME=FOLDER`` or ``FOLDER`` (named by its method) -> loaded adapters, in order."""
    out: dict[str, Any] = {}
    for spec in specs:
        name, _, path = spec.partition("=") if "=" in spec and not Path(spec).exists() else ("", "", spec)
        adapter = load_adapter(path, new, old=old, check_fingerprint=check_fingerprint)
        label = name or adapter.method
        if label in out:
            label = f"{label} ({Path(path).name})"
        out[label] = adapter
    return out


def add_option_flags(parser: argparse.ArgumentParser, cls: type, prefix: str | None = None,
                     exclude: Sequence[str] = ()) -> dict[str, str]:
    """Add one flag per field of the option dataclass ``cls``; returns {argparse dest: field name}.

    ``--<prefix>-<field-name>`` (dashes for underscores); bools get ``--x/--no-x``, tuples take
    several values, ``X | None`` fields take an ``X``. Defaults are suppressed: only given flags appear.
    """
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(f"{cls.what} options" + (f" (--{prefix}-...)" if prefix else ""))
    dests = {}
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        typ = hints[f.name]
        if isinstance(typ, types.UnionType):  # X | None
            typ = next(a for a in typing.get_args(typ) if a is not type(None))
        dest = f"{prefix or 'opt'}__{f.name}"
        kw: dict[str, Any] = {"dest": dest, "default": argparse.SUPPRESS, "help": f"{f.metadata.get('help', '')} (default: {f.default})"}
        if typ is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(typ) is tuple:
            kw.update(nargs="+", type=typing.get_args(typ)[0])
        else:
            kw["type"] = typ
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        group.add_argument("--" + (f"{prefix}-" if prefix else "") + f.name.replace("_", "-"), **kw)
        dests[dest] = f.name
    return dests


def given_options(args: argparse.Namespace, dests: dict[str, str]) -> dict[str, Any]:
    """The options among ``dests`` that were given on the command line, by field name."""
    return {name: getattr(args, dest) for dest, name in dests.items() if hasattr(args, dest)}


def load_vectors(path: str) -> torch.Tensor:
    """A float32 [n, d] tensor from a ``.safetensors`` file (its one tensor, or ``"embeddings"``) or a ``.npy`` array.

    Pickled formats are never read: ``.npy`` files holding Python objects are refused.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise XBTError(f"{file} does not exist; give a .safetensors or .npy file of [n_pairs, d_old] vectors")
    if file.suffix == ".npy":
        try:
            array = np.load(file, allow_pickle=False)
        except ValueError as exc:
            raise XBTError(f"{file} holds pickled Python objects, which xbt never loads; save a plain float array "
                           "(np.save(path, vectors.astype('float32')))") from exc
        vectors = torch.from_numpy(np.ascontiguousarray(array))
    elif file.suffix == ".safetensors":
        from safetensors.torch import load_file

        tensors = load_file(str(file))
        if len(tensors) != 1 and "embeddings" not in tensors:
            raise XBTError(f"{file} holds tensors {sorted(tensors)}; save one tensor, or name it 'embeddings'")
        vectors = tensors["embeddings"] if "embeddings" in tensors else next(iter(tensors.values()))
    else:
        raise XBTError(f"{file}: vectors must be a .safetensors or .npy file (pickle formats such as .pt or .pkl are never read)")
    if vectors.ndim != 2 or not vectors.is_floating_point():
        raise XBTError(f"{file} holds a {tuple(vectors.shape)} {vectors.dtype} array; expected float vectors [n_pairs, d_old]")
    return vectors.float()


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
    p.add_argument("--index", default="flat", choices=("flat", "block", "ivf"), help="search: flat (faiss, exact), block (exact, bounded memory) or ivf")
    p.add_argument("--nprobe", type=int, default=None, help="IVF cells visited per query (default min(nlist, 16))")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: CUDA when present)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    p.add_argument("--no-query-cost", action="store_true", help="skip timing the query path against the bare new model")
    p.add_argument("--no-fingerprint-check", action="store_true",
                   help="accept models whose weights differ from those the adapters recorded (e.g. another precision)")
    p.add_argument("--out", default="xbt-eval", help="output folder for report.json/.md/.png (default ./xbt-eval)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    """``xbt eval``: load the models and adapters, evaluate, print the markdown, save the report."""
    if not args.adapter and not args.new:
        raise XBTError("give --adapter FOLDER (new→old) and/or --new MODEL (new→new only)")
    old = load_model(args.old, args.old_pretrained, args.device)
    new = load_model(args.new, args.new_pretrained, args.device) if args.new else _new_from_adapter_config(args.adapter[0], args.device)
    check = not args.no_fingerprint_check
    upgraded = _load_adapters(args.adapter, new, old, check) if args.adapter else new
    report = evaluate(
        old, upgraded, dataset=args.dataset, split=args.split, root=args.root, source=args.source, limit=args.limit,
        ks=args.ks, index=args.index, nprobe=args.nprobe, cache=False if args.no_cache else None, device=args.device,
        query_cost=not args.no_query_cost, verbose=not args.quiet, check_fingerprint=check,
    )
    out = report.save(args.out)
    print(report.to_markdown())
    print(f"wrote {out / 'report.json'}, {out / 'report.md'}, {out / 'report.png'}")
    return 0


# ---------------------------------------------------------------------- demo


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
    p.add_argument("--world", default="shapes", choices=["shapes", "patterns"], help="toy world (default: shapes)")
    p.add_argument("--texts", type=int, default=50_000, help="stage-1 caption corpus size")
    p.add_argument("--pairs", type=int, default=2_000, help="image-caption pairs for stage 2 and SLERP's weights")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_demo)


def _run_demo(args) -> int:
    run_demo(out=args.out, n_texts=args.texts, n_pairs=args.pairs, seed=args.seed, verbose=not args.quiet, world=args.world)
    return 0


# ---------------------------------------------------------------------- fit


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
    p.add_argument("--method", default="xbt", choices=METHODS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    p.add_argument("--old-image-embeddings", metavar="FILE", default=None,
                   help="(xbt) OLD-model vectors of the pair images, in pair order: .safetensors or .npy [n_pairs, d_old]")
    p.add_argument("--checkpoint-dir", default=None, help="(xbt) checkpoint stage 2 here after every epoch; resume a matching run")
    p.add_argument("--no-stage1", action="store_true", help="(xbt) skip the text-only stage 1 (needs --old-image-embeddings)")
    p.add_argument("--overwrite", action="store_true", help="replace a different adapter already in --out")
    p.add_argument("--out", required=True, help="folder to save the adapter in")
    p.add_argument("--push-to-hub", metavar="REPO", default=None, help="also upload the saved folder to this Hub repo")
    p.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")
    p.add_argument("--token", default=None, help="with --push-to-hub: Hub token (default: the logged-in one)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    dests = {
        "stage1": add_option_flags(p, Stage1Config, "stage1", exclude=("seed",)),
        "stage2": add_option_flags(p, Stage2Config, "stage2", exclude=("seed",)),
        "baseline": add_option_flags(p, BaselineConfig),
    }
    p.set_defaults(func=run_fit, option_dests=dests)


def run_fit(args: argparse.Namespace) -> int:
    """``xbt fit``: read the captions (and pairs), fit, save (and push)."""
    stage1, stage2, baseline = (given_options(args, args.option_dests[k]) for k in ("stage1", "stage2", "baseline"))
    flags = {"stage1": sorted(stage1), "baseline": sorted(baseline)}
    if args.method == "xbt" and baseline:
        raise XBTError(f"options {flags['baseline']} apply to the training-free methods {list(BASELINE_OPTIONS)}, not to method 'xbt'")
    if args.method != "xbt" and stage1:
        raise XBTError(f"--stage1-* options {flags['stage1']} apply to method 'xbt' only, not to method {args.method!r}")
    path = Path(args.texts)
    if not path.is_file():
        raise XBTError(f"--texts {path} does not exist; give a UTF-8 text file with one caption per line")
    texts = path  # read lazily, line by line (xbt.stream): a caption file larger than memory is fine
    pairs = None
    if args.pairs:
        import datasets

        try:
            pairs = datasets.load_from_disk(args.pairs)
        except FileNotFoundError as exc:
            raise XBTError(f"--pairs {args.pairs} is not a folder written by datasets.Dataset.save_to_disk ({exc})") from exc
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
    adapter = fit(old, new, texts, pairs=pairs, method=args.method, seed=args.seed, device=args.device,
                  cache=False if args.no_cache else None, verbose=not args.quiet, **xbt_options, **stage1, **baseline)
    out = adapter.save_pretrained(args.out, overwrite=args.overwrite, repo_id=args.push_to_hub)
    print(f"saved {adapter!r} to {out}")
    if args.push_to_hub:
        url = push_folder(out, args.push_to_hub, private=args.private, token=args.token)
        print(f"pushed {out} to {url}")
    return 0


# ---------------------------------------------------------------------- push


@subcommand
def _push(sub) -> None:
    p = sub.add_parser("push", help="upload a saved adapter folder (with its model card) to the Hugging Face Hub")
    p.add_argument("--adapter", required=True, help="folder written by save_pretrained / xbt fit")
    p.add_argument("--repo", required=True, help="Hub repo id, e.g. org/xbt-l14-to-b32")
    p.add_argument("--private", action="store_true")
    p.add_argument("--token", default=None, help="Hub token (default: the logged-in one)")
    p.set_defaults(func=_run_push)


def _run_push(args) -> int:
    url = push_folder(args.adapter, args.repo, private=args.private, token=args.token)
    print(f"pushed {args.adapter} to {url}")
    return 0


# ---------------------------------------------------------------------- export


@subcommand
def _export(sub) -> None:
    p = sub.add_parser("export", help="write an adapter's query encoders (LoRA merged) as ONNX, served by onnxruntime alone",
                       description="Write text.onnx, image.onnx, tokenizer.json, xbt_export.json and xbt_runtime.py to --out.")
    p.add_argument("--adapter", required=True, help="adapter folder or Hub repo")
    p.add_argument("--new", default=None, help="new model (default: the one named in the adapter's config)")
    p.add_argument("--new-pretrained", default=None)
    p.add_argument("--format", default="onnx", choices=EXPORT_FORMATS)
    p.add_argument("--out", required=True, help="folder to write the exported encoders to")
    p.set_defaults(func=_run_export)


def _run_export(args) -> int:
    new = load_model(args.new, args.new_pretrained) if args.new else _new_from_adapter_config(args.adapter, None)
    out = load_adapter(args.adapter, new).export(args.format, args.out)
    print(f"exported {args.adapter} to {out}: load it with xbt_runtime.load({str(out)!r}) (numpy, onnxruntime, tokenizers)")
    return 0


@subcommand
def _app(sub) -> None:
    p = sub.add_parser("app", help="the search page (Gradio, pip install 'xbt[app]'): old→old vs new→old vs new→new, report")
    app_arguments(p)
    p.set_defaults(func=lambda args: serve(args, load_model, _load_adapters, lambda path: _new_from_adapter_config(path, None)))


# ---------------------------------------------------------------------- gallery (xbt/gallery_commands.py)


@subcommand
def _gallery(sub) -> None:
    register_gallery(sub, load_model)


# ---------------------------------------------------------------------- entry point


def build_parser() -> argparse.ArgumentParser:
    """The ``xbt`` argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(prog="xbt", description="Upgrade a CLIP model without re-embedding the gallery.")
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

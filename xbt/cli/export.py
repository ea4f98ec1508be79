"""``xbt export``: an adapter's query encoders as ONNX, served by onnxruntime alone."""

from __future__ import annotations

import argparse

from ..adapters.registry import load_adapter
from ..serving.export import EXPORT_FORMATS
from .common import load_model, new_from_adapter_config


def register(p: argparse.ArgumentParser) -> None:
    """Fill in the ``xbt export`` parser that ``xbt.cli`` made with its one-line help."""
    p.description = "Write text.onnx, image.onnx, tokenizer.json, xbt_export.json and xbt_runtime.py to --out."
    p.add_argument("--adapter", required=True, help="adapter folder or Hub repo")
    p.add_argument("--new", default=None, help="new model (default: the one named in the adapter's config)")
    p.add_argument(
        "--new-pretrained", metavar="TAG", default=None, help="open_clip pretrained tag of --new (e.g. openai)"
    )
    p.add_argument("--format", default="onnx", choices=EXPORT_FORMATS, help="export format (default onnx)")
    p.add_argument("--out", required=True, help="folder to write the exported encoders to")
    p.add_argument(
        "--overwrite", action="store_true", help="replace another adapter's export in --out (your other files stay)"
    )
    p.set_defaults(func=run)


def run(args) -> int:
    new = load_model(args.new, args.new_pretrained) if args.new else new_from_adapter_config(args.adapter, None)
    out = load_adapter(args.adapter, new).export(args.format, args.out, overwrite=args.overwrite)
    print(
        f"exported {args.adapter} to {out}: load it with xbt_runtime.load({str(out)!r}) (numpy, onnxruntime, "
        "tokenizers)"
    )
    return 0

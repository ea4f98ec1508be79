"""``xbt push`` and ``xbt export``: share a saved adapter, on the Hugging Face Hub or as ONNX query encoders.

``push`` uploads a saved adapter folder (with its model card). Everything that can be checked offline is checked
before the first request: the repo id, that ``--adapter`` is an adapter folder of this format, and that its files
are the ones it was saved with (digests, ``adapter_id``). A failure on the Hub's side (network, offline mode,
token, permissions) ends in one line naming the fix. ``export`` writes the adapter's query encoders as ONNX,
served by onnxruntime alone.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..adapters.config import CONFIG_NAME, read_config
from ..adapters.folder import check_adapter_id, verify_folder
from ..adapters.hub import push_folder
from ..adapters.registry import load_adapter
from ..core.errors import XBTError
from ..serving.export import EXPORT_FORMATS
from .common import check_repo_id, load_model, new_from_adapter_config


def register_push(p: argparse.ArgumentParser) -> None:
    """Fill in the ``xbt push`` parser that ``xbt.cli`` made with its one-line help."""
    p.description = (
        "Upload an adapter folder written by xbt fit or save_pretrained (xbt_config.json, the weights, the model "
        "card README.md) to a Hugging Face Hub model repo, creating the repo if needed; nothing else in the folder "
        "is uploaded, and nothing is written locally. Needs the network and a write token."
    )
    p.add_argument(
        "--adapter", required=True, metavar="FOLDER", help="folder written by save_pretrained / xbt fit (--out)"
    )
    p.add_argument("--repo", required=True, metavar="ORG/NAME", help="Hub repo id, e.g. org/xbt-l14-to-b32")
    p.add_argument(
        "--private", action="store_true", help="create the repo as private (an existing repo is kept as is)"
    )
    p.add_argument(
        "--token",
        default=None,
        metavar="TOKEN",
        help="Hub token with write access (default: the logged-in one, or HF_TOKEN)",
    )
    p.set_defaults(func=run_push)


def check_adapter_folder(path: str) -> Path:
    """Refuse an ``--adapter`` that is not a saved adapter folder, or whose files changed since it was saved."""
    folder = Path(path).expanduser()
    fix = "give the folder that xbt fit --out or Adapter.save_pretrained wrote"
    if not folder.exists():
        raise XBTError(f"--adapter {path} does not exist; {fix}")
    if not folder.is_dir():
        raise XBTError(f"--adapter {path} is a file, not a folder; {fix}")
    config = read_config(folder)  # refuses a folder that is not an adapter, or from a newer xbt
    if (folder / CONFIG_NAME).is_file() and verify_folder(folder, config, check_fingerprint=False):
        check_adapter_id(folder, config)
    return folder


def run_push(args) -> int:
    check_repo_id(args.repo, "--repo")  # before anything reaches the network
    check_adapter_folder(args.adapter)
    try:
        url = push_folder(args.adapter, args.repo, private=args.private, token=args.token)
    except XBTError:
        raise
    except Exception as exc:  # network, offline mode, token, permissions: say which, and what to do
        problem = (str(exc).strip().splitlines() or [""])[0]
        raise XBTError(
            f"could not push {args.adapter} to {args.repo} ({type(exc).__name__}: {problem}); check the network "
            "(HF_HUB_OFFLINE must be unset), your token (--token, HF_TOKEN or hf auth login) and that it may write "
            f"to {args.repo.split('/')[0]}"
        ) from None
    print(f"pushed {args.adapter} to {url}")
    return 0


def register_export(p: argparse.ArgumentParser) -> None:
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
    p.set_defaults(func=run_export)


def run_export(args) -> int:
    new = load_model(args.new, args.new_pretrained) if args.new else new_from_adapter_config(args.adapter, None)
    out = load_adapter(args.adapter, new).export(args.format, args.out, overwrite=args.overwrite)
    print(
        f"exported {args.adapter} to {out}: load it with xbt_runtime.load({str(out)!r}) (numpy, onnxruntime, "
        "tokenizers)"
    )
    return 0

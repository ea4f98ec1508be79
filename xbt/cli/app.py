"""``xbt app``: the search page over an old gallery, old→old beside new→old and new→new.

Every input that can be checked without a model is checked first (counts, the gallery folder, the report file,
the dataset name, the folder to save the gallery in, the address and port, Gradio itself): loading the models and
fitting the toy adapters take seconds to a minute that a typo should not cost.
"""

from __future__ import annotations

import argparse
import errno
import json
import socket
from pathlib import Path

from ..app.engine import SearchEngine
from ..app.page import launch, toy_adapters
from ..core.errors import XBTError
from ..core.names import GALLERY_FILE, MIXED_GALLERY, gallery_kind
from ..data.retrieval import ALIASES, load_dataset
from ..evaluation.report import Report
from ..gallery.static import StaticGallery
from .common import load_adapters, load_model, new_from_adapter_config


def register(p: argparse.ArgumentParser) -> None:
    """Fill in the ``xbt app`` parser that ``xbt.cli`` made with its one-line help."""
    p.description = (
        "Serve a search page over an old gallery: a caption finds images, an image finds captions, old→old beside "
        "new→old per adapter and new→new, hits marked; an Evaluation tab shows a report. With the toy models and no "
        "--adapter it fits XBT stage 1 and stage 1+2 at start (seconds). Writes nothing unless --save-gallery is "
        "given. Needs pip install 'xbt[app]'."
    )
    arguments(p)
    p.set_defaults(func=run)


def arguments(p) -> None:
    """The ``xbt app`` flags."""
    p.add_argument(
        "--old",
        default="xbt-toy-old",
        metavar="MODEL",
        help="old model: toy name, open_clip name, hf:<id>, or a local-dir folder (default: xbt-toy-old)",
    )
    p.add_argument(
        "--old-pretrained", default=None, metavar="TAG", help="open_clip pretrained tag of --old (e.g. openai)"
    )
    p.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="[NAME=]FOLDER_OR_REPO",
        help="adapter folder or Hub repo, repeatable (default with the toy models: XBT stage 1 and stage 1+2, "
        "fitted at start)",
    )
    p.add_argument(
        "--new",
        default=None,
        metavar="MODEL",
        help="new model (default: the one named in the first adapter's config)",
    )
    p.add_argument(
        "--new-pretrained", default=None, metavar="TAG", help="open_clip pretrained tag of --new (e.g. openai)"
    )
    p.add_argument(
        "--dataset",
        default="toy",
        metavar="NAME",
        help="gallery: toy | flickr30k | coco | nocaps (as xbt eval reads them; default: toy)",
    )
    p.add_argument(
        "--split",
        default=None,
        metavar="SPLIT",
        help="test (1K Flickr / 5K COCO), full, val, ... (as xbt eval; default test; nocaps: val)",
    )
    p.add_argument(
        "--root",
        default=None,
        metavar="DIR",
        help="folder with the dataset files (local) or a downloaded webdataset copy (hf)",
    )
    p.add_argument("--limit", type=int, default=None, metavar="N", help="use only the first N gallery images")
    p.add_argument(
        "--gallery",
        default=None,
        metavar="DIR",
        help="a folder written by StaticGallery.save (xbt app --save-gallery) (instead of --dataset)",
    )
    p.add_argument(
        "--save-gallery",
        default=None,
        metavar="DIR",
        help="save the gallery (images, captions, old vectors) to this folder",
    )
    p.add_argument(
        "--report", default=None, metavar="REPORT_JSON", help="a report.json (xbt eval) for the Evaluation tab"
    )
    p.add_argument("--k", type=int, default=5, metavar="K", help="results per column (default: 5)")
    p.add_argument(
        "--no-new-new", action="store_true", help="no new→new column (skips embedding the gallery with the new model)"
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        metavar="ADDRESS",
        help="address to serve on (default: 127.0.0.1, this machine only; 0.0.0.0 for the network)",
    )
    p.add_argument(
        "--port", type=int, default=None, metavar="PORT", help="port to serve on (default: the first free from 7860)"
    )
    p.add_argument(
        "--share",
        action="store_true",
        help="also serve a temporary public gradio.live link (Gradio's share=True: anyone with the link can search "
        "the gallery; needs internet)",
    )


def check_gallery_folder(path: str) -> None:
    """Refuse a ``--gallery`` that is not a search page's gallery folder, before any model is loaded."""
    folder = Path(path).expanduser()
    fix = "save one with xbt app --save-gallery DIR (or StaticGallery.build(old, dataset).save(DIR)), or use --dataset"
    if not (folder / GALLERY_FILE).is_file():
        raise XBTError(f"--gallery {path} is not a gallery folder (no {GALLERY_FILE} there); {fix}")
    try:
        meta = json.loads((folder / GALLERY_FILE).read_text(encoding="utf-8"))
    except ValueError as exc:
        raise XBTError(f"{folder / GALLERY_FILE} is unreadable (truncated or corrupt: {exc}); {fix}") from None
    if isinstance(meta, dict) and gallery_kind(meta) == MIXED_GALLERY:
        raise XBTError(
            f"--gallery {path} is a gallery in migration (xbt gallery build): search it with xbt gallery search"
        )


def read_report(path: str | None) -> Report | None:
    """The ``--report`` file as a ``Report`` (``None`` without one), read before any model is loaded."""
    if path is None:
        return None
    file = Path(path).expanduser()
    if file.is_dir():
        inside = " (there is one in it: give that file)" if (file / "report.json").is_file() else ""
        raise XBTError(f"--report {path} is a folder{inside}; give the report.json that xbt eval wrote")
    if not file.is_file():
        raise XBTError(f"--report {path} does not exist; give the report.json that xbt eval wrote, or drop --report")
    try:
        return Report.from_dict(json.loads(file.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise XBTError(
            f"--report {path} is not a report written by xbt eval ({type(exc).__name__}: {exc}); give its report.json"
        ) from None


def check_serving(host: str, port: int | None) -> None:
    """Refuse a ``--port`` out of range or taken, or a ``--host`` that is not an address of this machine."""
    if port is not None and not 1 <= port <= 65535:
        raise XBTError(f"--port must be in 1..65535, got {port}; or leave it out for the first free port from 7860")
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
            probe.bind((host, port or 0))
    except OSError as exc:
        why = exc.strerror or str(exc)
        if port and exc.errno == errno.EADDRINUSE:
            raise XBTError(f"--port {port} on {host} is taken ({why}); give another --port, or leave it out") from None
        raise XBTError(
            f"cannot serve on --host {host} ({why}); give 127.0.0.1, 0.0.0.0 or an address of this machine"
        ) from None


def check_inputs(args) -> None:
    """Every check that needs no model: counts, files and folders, the dataset's name, the address, Gradio."""
    for flag, value in (("--k", args.k), ("--limit", args.limit)):
        if value is not None and value < 1:
            raise XBTError(f"{flag} must be >= 1, got {value}")
    if args.gallery:
        check_gallery_folder(args.gallery)
    elif str(args.dataset).lower() not in ALIASES:
        raise XBTError(f"--dataset {args.dataset!r} is unknown; give one of {sorted(set(ALIASES.values()))}")
    if args.save_gallery and Path(args.save_gallery).expanduser().is_file():
        raise XBTError(f"--save-gallery {args.save_gallery} is a file; give a folder (new, or a saved gallery's)")
    read_report(args.report)  # refused now, not after the models; launch reads it again
    check_serving(args.host, args.port)
    try:
        import gradio  # noqa: F401  (the page needs it; found out now, not after the models)
    except ImportError:
        raise XBTError("the search page needs Gradio: pip install 'xbt[app]'") from None


def run(args) -> int:
    """``xbt app``: check the inputs, load the dataset, models, adapters and gallery named by ``args``, serve."""
    check_inputs(args)
    dataset = (
        None
        if args.gallery
        else load_dataset(args.dataset, split=args.split, root=args.root, limit=args.limit)  # its own refusals
    )
    old = load_model(args.old, args.old_pretrained)
    if args.adapter:
        new = (
            load_model(args.new, args.new_pretrained)
            if args.new
            else new_from_adapter_config(args.adapter[0].rpartition("=")[2], None)
        )
        adapters = load_adapters(args.adapter, new, old, True)
    elif args.old == "xbt-toy-old" and args.new in (None, "xbt-toy-new"):
        adapters = toy_adapters(old, load_model("xbt-toy-new"), verbose=True)
    else:
        raise XBTError("give --adapter FOLDER (repeatable); only the toy models get a default adapter")
    gallery = StaticGallery.load(args.gallery, old) if args.gallery else StaticGallery.build(old, dataset)
    if args.save_gallery:
        print(f"saved the gallery to {gallery.save(args.save_gallery)}")
    engine = SearchEngine(old, adapters, gallery, new_new=not args.no_new_new, verbose=True)
    launch(engine, args.report, args.k, inline=False, server_name=args.host, server_port=args.port, share=args.share)
    return 0

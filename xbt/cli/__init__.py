"""The ``xbt`` command: one module per subcommand or kind of subcommand (``evaluate``: ``eval`` and ``advise``;
``share``: ``push`` and ``export``; ``demo``, ``toy``, ``fit``, ``app``, ``gallery``).

Each subcommand module has ``register(parser)``, which fills in the parser made here with the command's
one-line help (``COMMANDS``): its description, its flags and ``func`` (called with the parsed args;
returns the exit status). Errors of type ``XBTError`` are printed as
``xbt <cmd>: error: ...`` with exit status 2. Only the subcommand that runs is imported: ``xbt --help``
lists them all from ``COMMANDS`` without loading torch. The top layer: it may import every package.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ..core.errors import XBTError
from ..version import __version__

#: subcommand -> the one line ``xbt --help`` shows, in the order listed there
COMMANDS: dict[str, str] = {
    "demo": "run the whole pipeline offline on a toy world and print the comparison table",
    "toy": "list the shipped toy models, write toy texts, pairs and images to try the other commands on",
    "fit": "fit an adapter (XBT or a baseline) from a caption file and save it",
    "eval": "evaluate adapters: old→old, new→old, new→new Recall@K, flips, verdict",
    "advise": "before fitting: will an adapter be backward compatible? predicted from a caption file alone",
    "push": "upload a saved adapter folder (with its model card) to the Hugging Face Hub",
    "export": "write an adapter's query encoders (LoRA merged) as ONNX, served by onnxruntime alone",
    "app": "the search page (Gradio, pip install 'xbt[app]'): old→old vs new→old vs new→new, report",
    "gallery": "a gallery in migration: build, backfill (resumable, or on Ray), search, upgrade, refresh, rollback",
}


def _module(command: str):
    """The module of ``command``, imported now: plain imports, so the layering check sees each arrow."""
    if command == "demo":
        from . import demo as module
    elif command == "toy":
        from . import toy as module
    elif command == "fit":
        from . import fit as module
    elif command in ("eval", "advise"):
        from . import evaluate as module
    elif command in ("push", "export"):
        from . import share as module
    elif command == "app":
        from . import app as module
    else:
        from . import gallery as module
    return module


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``xbt`` argument parser.

    ``command=None`` builds every subcommand in full (what tests and documentation walk); a name builds
    that one in full and lists the others by their help line only, so only its module is imported.
    """
    parser = argparse.ArgumentParser(prog="xbt", description="Upgrade a CLIP model without re-embedding the gallery.")
    parser.add_argument("--version", action="version", version=f"xbt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, line in COMMANDS.items():
        p = sub.add_parser(name, help=line)
        if command is None or command == name:
            module = _module(name)  # the module adds its description, flags and ``func``
            register = {"advise": "register_advise", "push": "register_push", "export": "register_export"}
            getattr(module, register.get(name, "register"))(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``xbt`` command with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    # Before torch loads (the command's module imports it): OpenMP threads that spin while they wait slow a
    # run ten-fold when another process holds a core of a small machine; waiting passively costs nothing
    # when the cores are free. A value the user set is kept.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), "")
    parser = build_parser(command if command in COMMANDS else "")
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

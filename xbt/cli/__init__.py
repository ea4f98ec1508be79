"""The ``xbt`` command: one module per subcommand (``fit``, ``eval``, ``demo``, ``push``, ``export``, ``app``,
``gallery``).

Each subcommand module has ``register(subparsers)``, which adds its parser and sets ``func`` (called
with the parsed args; returns the exit status). Errors of type ``XBTError`` are printed as
``xbt <cmd>: error: ...`` with exit status 2. The top layer: it may import every package.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..core.errors import XBTError
from ..version import __version__
from . import app, demo, evaluate, export, fit, gallery, push

#: the subcommand modules, in the order ``xbt --help`` lists them
SUBCOMMANDS = (evaluate, demo, fit, push, export, app, gallery)


def build_parser() -> argparse.ArgumentParser:
    """The ``xbt`` argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(prog="xbt", description="Upgrade a CLIP model without re-embedding the gallery.")
    parser.add_argument("--version", action="version", version=f"xbt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in SUBCOMMANDS:
        command.register(sub)
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

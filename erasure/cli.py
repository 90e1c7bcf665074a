"""``care-erasure`` command line: one subcommand per module in :mod:`erasure.commands`.

Each command module defines ``register(subparsers) -> None``, adding its parser and setting
``func=callable(args) -> int`` as a default. Adding a command is adding a module; nothing here changes.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from . import __version__, commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="care-erasure",
        description="Erase concepts from text-to-image diffusion models while sparing co-occurring (CARE) concepts.",
    )
    parser.add_argument("--version", action="version", version=f"care-erasure {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"{commands.__name__}.{info.name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as err:  # the engine's errors are ValueErrors with user-facing messages
        print(f"care-erasure {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

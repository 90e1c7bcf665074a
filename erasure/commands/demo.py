"""``care-erasure demo``: the main job on the embedded toy world (see :mod:`erasure.toyworld.demo`)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..toyworld import demo

    parser = subparsers.add_parser(
        "demo",
        help="erase a concept from the embedded toy world, naive vs CARE-aware; audit table and grid PNG",
        description=demo.__doc__.split("\n")[0],
    )
    demo.add_arguments(parser)
    parser.set_defaults(func=demo.run)

"""The ``normcore`` command line (also ``python -m normcore``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _info(args: argparse.Namespace) -> int:
    from ._info import info_lines

    print("\n".join(info_lines()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``normcore`` command."""
    parser = argparse.ArgumentParser(
        prog="normcore",
        description="Layer, RMS and batch normalization on NumPy, CuPy and PyTorch.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    info = commands.add_parser("info", help="show version, adapters, libraries and devices")
    info.set_defaults(run=_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())

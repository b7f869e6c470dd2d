"""The ``normcore`` command line (also ``python -m normcore``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["main"]


def _info(args: argparse.Namespace) -> int:
    from ._tools.info import info_lines

    print("\n".join(info_lines()))
    return 0


def _check(args: argparse.Namespace) -> int:
    from ._tools.check import CheckError, check_rows, format_table

    try:
        rows = list(check_rows(args.backend))
    except CheckError as error:
        print(f"normcore check: {error}", file=sys.stderr)
        return 2
    print("\n".join(format_table(rows)))
    counts = {status: sum(row.status == status for row in rows) for status in ("PASS", "FAIL")}
    skipped = len(rows) - counts["PASS"] - counts["FAIL"]
    print(f"{counts['PASS']} passed, {counts['FAIL']} failed, {skipped} skipped")
    return 1 if counts["FAIL"] else 0


def _bench(args: argparse.Namespace) -> int:
    if args.sync:
        from ._tools.bench_sync import run as run_sync

        run_sync(quick=args.quick)
        return 0
    from ._tools.bench import run

    run(quick=args.quick)
    return 0


def _experiment(args: argparse.Namespace) -> int:
    from .experiments._common import ExperimentError
    from .experiments._runner import run

    try:
        run(args.experiment, backend=args.backend, seed=args.seed, epochs=args.epochs,
            hidden=args.hidden, out=args.out)  # fmt: skip
    except ExperimentError as error:
        print(f"normcore experiment: {error}", file=sys.stderr)
        return 2
    return 0


def _add_experiments(commands: Any) -> None:
    experiment = commands.add_parser(
        "experiment",
        help="reproduce the layer-norm paper's comparisons in miniature (tables and plots)",
        description="Run one experiment on scikit-learn's 8x8 digits with normcore's own "
        "forward, backward and Adam; print its table, write OUT/NAME.png and OUT/NAME.md. "
        'Needs pip install "normcore[experiments]". Exit status 2 when a package is missing.',
    )
    names = experiment.add_subparsers(dest="experiment", required=True, metavar="NAME")
    about = {
        "batch-size": "MLP without norm, with batch norm and with layer norm at batch 128 "
        "and 4 (the paper's permutation-invariant MNIST comparison; about a minute)",
        "rnn": "plain LSTM vs LN-LSTM reading the digits row by row",
        "invariance": "measure every cell of the paper's Table 1 (invariance properties)",
    }
    epochs_help = {
        "batch-size": "passes over the training set (default 20)",
        "rnn": "passes over the training set (default 15)",
        "invariance": "independent random draws of data, weights and transformations; "
        "the table keeps the largest change (default 5)",
    }
    for name, text in about.items():
        sub = names.add_parser(name, help=text, description=text)
        sub.add_argument(
            "--backend", default="numpy", metavar="B", help="numpy (default), torch or cupy"
        )
        sub.add_argument("--seed", type=int, default=0, help="seed of data split, init, order")
        sub.add_argument("--epochs", type=int, default=None, help=epochs_help[name])
        if name != "invariance":
            hidden_help = "hidden units (default: 256 batch-size, 32 rnn)"
            sub.add_argument("--hidden", type=int, default=None, help=hidden_help)
        out_help = "where NAME.png and NAME.md go (default normcore-results)"
        sub.add_argument("--out", default="normcore-results", metavar="DIR", help=out_help)
        sub.set_defaults(run=_experiment, hidden=None)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``normcore`` command."""
    parser = argparse.ArgumentParser(
        prog="normcore",
        description="Layer, RMS and batch normalization on NumPy, CuPy and PyTorch.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"normcore {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    info = commands.add_parser("info", help="show version, adapters, libraries and devices")
    info.set_defaults(run=_info)
    check = commands.add_parser(
        "check",
        help="self-test every installed adapter on each of its devices",
        description="Compare each adapter's fast path and the reference path with a float64 "
        "NumPy computation of layer_norm, rms_norm and batch_norm (batch and given statistics; "
        "forward and backward) on a few shapes and layouts, "
        "on every device the adapter sees. Exit status: 0 all passed, 1 some failed, "
        "2 the backend is unknown or not installed.",
    )
    check.add_argument("--backend", metavar="B", help="check only this adapter (e.g. torch)")
    check.set_defaults(run=_check)

    bench = commands.add_parser(
        "bench",
        help="measure normcore against a copy and torch's native kernels (ratio table)",
        description="Time normcore's NumPy and torch paths side by side with an allocating "
        "copy and torch.nn.functional, and print the ratios with a PASS/MISS verdict per "
        "performance target (about a minute; medians of interleaved repeats). The header "
        "names the NumPy path measured (NumPy kernels, numba kernels or the reference path).",
    )
    bench.add_argument(
        "--quick",
        action="store_true",
        help="small sizes and few repeats, ratios shown but not graded (seconds; for CI)",
    )
    bench.add_argument(
        "--sync",
        action="store_true",
        help="instead: the cost of SyncBatchNorm over 2 processes (gloo on 127.0.0.1) "
        "against local batch norm (needs torch)",
    )
    bench.set_defaults(run=_bench)
    _add_experiments(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())

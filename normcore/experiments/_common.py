"""Pieces the experiments share: the backend, the loss, progress bars, tables and plots."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = [
    "ExperimentError",
    "Progress",
    "format_table",
    "load_backend",
    "log_softmax",
    "pyplot",
    "require_extras",
    "softmax_cross_entropy",
]

# module -> the package that provides it (what ``pip install normcore[experiments]`` adds)
EXTRAS = {"sklearn": "scikit-learn", "matplotlib": "matplotlib", "threadpoolctl": "threadpoolctl"}


class ExperimentError(Exception):
    """An experiment cannot run as asked; the message says why and what to install."""


def require_extras(modules: Iterable[str] = tuple(EXTRAS)) -> None:
    """Raise :class:`ExperimentError` naming the optional packages that are missing."""
    missing = [EXTRAS.get(m, m) for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ExperimentError(
            f"the experiments need {', '.join(missing)}, which "
            f"{'is' if len(missing) == 1 else 'are'} not installed: "
            'pip install "normcore[experiments]"'
        )


def load_backend(name: str) -> Any:
    """Return the array library of normcore's adapter ``name`` (``numpy``, ``torch``, ``cupy``).

    Raises :class:`ExperimentError` for an unknown name or a library that is not
    installed (with the adapter's install hint), before anything runs.
    """
    from normcore._tools.check import CheckError, select_adapters

    try:
        (adapter,) = select_adapters(name)
    except CheckError as error:
        raise ExperimentError(str(error)) from None
    try:
        module = importlib.import_module(adapter.library)
    except ImportError as error:  # installed but broken (e.g. CuPy without a CUDA driver)
        raise ExperimentError(f"backend {name!r} cannot be imported: {error}") from None
    if adapter.library == "torch":
        # The experiments' arrays are small: on 2 CPU cores one intra-op thread ran an
        # MLP step several times faster than torch's default (see examples/lstm_digits.py).
        module.set_num_threads(1)
    return module


def log_softmax(xp: Any, logits: Any) -> Any:
    """Row-wise log-softmax, shifted by the row maximum so ``exp`` cannot overflow."""
    shifted = logits - xp.max(logits, axis=1, keepdims=True)
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=1, keepdims=True))


def softmax_cross_entropy(xp: Any, logits: Any, onehot: Any) -> tuple[Any, Any]:
    """Return (mean loss, d loss / d logits) of a softmax cross-entropy."""
    log_p = log_softmax(xp, logits)
    n = logits.shape[0]
    loss = -xp.sum(onehot * log_p) / n
    return loss, (xp.exp(log_p) - onehot) / n


class Progress:
    """A progress bar over ``total`` steps: tqdm when installed, else a line on stderr.

    ``disable=True`` shows nothing (tests, library use).
    """

    def __init__(self, total: int, description: str, *, disable: bool = False) -> None:
        self.total, self.description, self.disable = total, description, disable
        self.done = 0
        self._bar = None
        self._last_percent = -1
        if not disable and importlib.util.find_spec("tqdm") is not None:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=description, leave=False, file=sys.stderr)

    def update(self, steps: int = 1) -> None:
        self.done += steps
        if self._bar is not None:
            self._bar.update(steps)
        elif not self.disable:
            percent = 100 * self.done // max(self.total, 1)
            if percent // 10 != self._last_percent // 10:  # every 10 %
                self._last_percent = percent
                print(f"\r{self.description}: {percent:3d}%", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif not self.disable:
            print(file=sys.stderr, flush=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def format_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table (readable on a terminal and in the docs)."""
    lines = [list(map(str, header)), *([str(c) for c in row] for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]

    def render(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([render(lines[0]), rule, *(render(line) for line in lines[1:])])


def pyplot() -> Any:
    """matplotlib's pyplot on the non-interactive Agg backend (writes files, needs no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt

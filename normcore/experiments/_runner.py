"""``normcore experiment NAME``: run one experiment, print its table, write its table and plot.

Each runner returns the table it printed; the PNG and a Markdown copy of the
table go to ``out/NAME.png`` and ``out/NAME.md``. Wall-clock times are printed
after the table, not in it, so that a table depends on the seed alone.

BLAS runs single-threaded during an experiment (threadpoolctl), so that a
table does not depend on the number of cores (OpenBLAS's threads split its
sums differently, and training amplifies the round-off: the LN-LSTM's last
epoch reads 0.0310 on two threads and 0.0693 on one), and because the models
are small: threaded matrix products only add synchronization (once measured
37.7 s against 9.6 s for ``normcore experiment rnn`` on a busy 2-core machine;
on an idle one the two were within 15 %).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._common import ExperimentError, Progress, format_table, load_backend, require_extras

__all__ = ["DEFAULT_EPOCHS", "EXPERIMENTS", "run"]


def _batch_size(xp: Any, settings: dict[str, Any], png: Path, show: bool) -> tuple[str, str]:
    from . import batch_size

    results = batch_size.compare(backend=xp, show_progress=show, **settings)
    title = f"8x8 digits MLP, seed {settings['seed']} ({xp.__name__})"
    batch_size.plot_curves(results, str(png), title=title)
    seconds = ", ".join(
        f"{batch_size.NORMS[n]} {b}: {c['seconds']:.1f} s" for (n, b), c in results.items()
    )
    return batch_size.format_results(results), f"training time: {seconds}"


def _rnn(xp: Any, settings: dict[str, Any], png: Path, show: bool) -> tuple[str, str]:
    from . import rnn_digits

    epochs = settings["epochs"]
    with Progress(2 * epochs, "rnn", disable=not show) as bar:
        results = rnn_digits.compare(backend=xp, progress=lambda *_: bar.update(), **settings)
    rnn_digits.plot_curves(results, str(png), title=f"8x8 digits row by row ({xp.__name__})")
    rows = [
        (name, f"{c['train_loss'][-1]:.4f}", f"{100 * (1 - c['test_accuracy'][-1]):.2f} %")
        for name, c in results.items()
    ]
    table = format_table(("model", "train loss (last epoch)", "test error"), rows)
    seconds = ", ".join(f"{name}: {c['seconds']:.1f} s" for name, c in results.items())
    return table, f"training time: {seconds}"


def _invariance(xp: Any, settings: dict[str, Any], png: Path, show: bool) -> tuple[str, str]:
    from . import invariance

    trials = settings.pop("epochs")  # --epochs: independent draws; the table keeps the worst
    rows = invariance.measure(backend=xp, trials=trials, show_progress=show, **settings)
    invariance.plot_table(rows, str(png), title="Table 1, measured: max relative change of h")
    agree = sum(r.agrees for r in rows)
    return invariance.format_rows(rows), f"{agree} of {len(rows)} cells agree with the paper"


EXPERIMENTS: dict[str, Callable[..., tuple[str, str]]] = {
    "batch-size": _batch_size,
    "rnn": _rnn,
    "invariance": _invariance,
}
# batch-size: 20 epochs of a 64-256-256-10 MLP, about a minute on 2 CPU cores (docs/experiments.md)
DEFAULT_EPOCHS = {"batch-size": 20, "rnn": 15, "invariance": 5}
DEFAULT_HIDDEN = {"batch-size": 256, "rnn": 32}


def run(
    name: str,
    *,
    backend: str = "numpy",
    seed: int = 0,
    epochs: int | None = None,
    hidden: int | None = None,
    out: str = "normcore-results",
    show_progress: bool = True,
) -> str:
    """Run experiment ``name``; print and return its table; write ``out/name.{png,md}``.

    Raises :class:`ExperimentError` (before any work) when the optional packages
    or the backend's library are missing, or ``backend`` is unknown.
    """
    require_extras()
    xp = load_backend(backend)
    if seed < 0:  # NumPy's generators take seeds >= 0
        raise ExperimentError(f"--seed must be >= 0, got {seed}")
    if epochs is not None and epochs < 1:
        raise ExperimentError(f"--epochs must be >= 1, got {epochs}")
    if hidden is not None and (hidden < 1 or name not in DEFAULT_HIDDEN):
        applies = " and ".join(DEFAULT_HIDDEN)
        raise ExperimentError(f"--hidden must be >= 1 and applies to {applies}, got {hidden}")
    directory = Path(out)
    try:  # before the training: a bad --out must not cost a run
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        reason = error.strerror or str(error)
        raise ExperimentError(f"--out {out!r} cannot be made a directory: {reason}") from None
    if not os.access(directory, os.W_OK):
        raise ExperimentError(f"--out {out!r} is a directory this user cannot write to")
    settings = {"seed": seed, "epochs": epochs or DEFAULT_EPOCHS[name]}
    if name in DEFAULT_HIDDEN:
        settings["hidden"] = hidden or DEFAULT_HIDDEN[name]
    from threadpoolctl import threadpool_limits

    start = time.perf_counter()
    with threadpool_limits(limits=1, user_api="blas"):
        table, note = EXPERIMENTS[name](xp, settings, directory / f"{name}.png", show_progress)
    (directory / f"{name}.md").write_text(table + "\n")
    print(table)
    print(note)
    print(f"{name}: {time.perf_counter() - start:.1f} s on {backend}; wrote {directory / name}.png")
    return table

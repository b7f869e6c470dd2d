"""The recurrent rows of ``python -m normcore bench``: ``normcore.LSTM`` on NumPy vs torch.nn.

Each figure is normcore's time over ``torch.nn.LSTM``'s (the plain cell, of
the same size, for the layer-normalized one too: issue #16's targets), on
the same float32 data: the forward alone (a module in ``eval()`` mode and
torch under ``no_grad``) and a training step's forward + backward (normcore's
module in training mode keeps its tape, torch's autograd its graph).

The calls are timed one at a time, each after a pause and an untimed call
of the same function, candidates in turns, and the medians compared: the
BLAS threads of one side's matmuls spin for about 0.1 s after them, and
timed back to back the other side's next call would pay for it (that cost
is the interleaved table's subject, not this one's).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from . import baselines
from .bench import Figure, Plan, Row

__all__ = ["COLUMNS", "rows"]

COLUMNS = ("vs torch.nn.LSTM",)

# Issue #16's targets: normcore's time over plain torch.nn.LSTM's.
TARGETS = {
    ("plain", "forward"): None,
    ("plain", "fwd+bwd"): 1.2,
    ("layer norm", "forward"): 1.5,
    ("layer norm", "fwd+bwd"): 1.5,
}

_PAUSE_S = 0.2


def _sizes(plan: Plan) -> tuple[int, int, int, int]:
    """``(T, B, I, H)``: issue #16's, or small ones for ``--quick``."""
    return (50, 64, 256, 256) if plan.graded else (5, 8, 32, 32)


def paused_medians(calls: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median seconds of one call of each, every call after a pause and an untimed call."""
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            time.sleep(_PAUSE_S)
            call()
            start = time.perf_counter()
            call()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(v) for name, v in samples.items()}


def rows(plan: Plan, normcore: Any, torch: Any) -> Iterator[Row]:
    """The four rows (plain and layer norm, forward and forward + backward)."""
    steps, batch, inputs, hidden = _sizes(plan)
    layout = f"T={steps} B={batch} I={inputs} H={hidden}"
    if torch is None:
        yield Row("LSTM", layout, hidden, "numpy", "both", note="torch is not installed")
        return
    xs = baselines.random((steps, batch, inputs), "float32", 0)
    dhs = baselines.random((steps, batch, hidden), "float32", 1)
    theirs = torch.nn.LSTM(inputs, hidden)
    txs, tdhs = torch.from_numpy(xs).requires_grad_(), torch.from_numpy(dhs)
    weights = {k: v.detach().numpy() for k, v in theirs.state_dict().items()}

    def torch_forward() -> None:
        with torch.no_grad():
            theirs(txs)

    def torch_step() -> None:
        out, _ = theirs(txs)
        out.backward(tdhs)

    calls: dict[str, Callable[[], Any]] = {"torch forward": torch_forward, "torch": torch_step}
    for name, layer_norm in (("plain", False), ("layer norm", True)):
        ours = normcore.LSTM(inputs, hidden, layer_norm=layer_norm, dtype="float32")
        if not layer_norm:  # the same weights: the same computation as torch's
            ours.load_torch_state_dict(weights)
        calls[f"{name} forward"] = _forward(ours, xs)
        calls[f"{name} fwd+bwd"] = _step(ours, xs, dhs)
    times = paused_medians(calls, max(plan.repeats, 7) if plan.graded else plan.repeats)
    for name in ("plain", "layer norm"):
        for direction, base in (("forward", "torch forward"), ("fwd+bwd", "torch")):
            row = Row(f"LSTM {name}", layout, hidden, "numpy", direction)
            row.time_s = times[f"{name} {direction}"]
            ratio = row.time_s / times[base]
            row.figures[COLUMNS[0]] = Figure(ratio, TARGETS[(name, direction)])
            yield row


def _forward(module: Any, xs: np.ndarray) -> Callable[[], Any]:
    def call() -> Any:
        module.eval()  # keeps no tape: a forward-only call
        return module(xs)

    return call


def _step(module: Any, xs: np.ndarray, dhs: np.ndarray) -> Callable[[], Any]:
    def call() -> Any:
        module.train()
        module(xs)
        return module.backward(dhs)

    return call

"""Table 1 of Ba, Kiros & Hinton (2016), measured: which transformations leave a layer unchanged.

One layer ``h = relu(norm(W x))`` on a random subset of scikit-learn's 8x8
digits (64 pixels in [0, 1]), with ``W`` holding one row of incoming weights per
hidden unit and the gain and bias applied after normalizing:

* batch norm: ``relu(batch_norm(x W^T, g, b))`` (statistics over the examples),
* weight norm: ``relu(x weight_norm(V, g)^T + b)`` (the transformations act on ``V``),
* layer norm: ``relu(layer_norm(x W^T, g, b))`` (statistics over the units).

Each of the paper's six transformations is applied and the largest change of
``h`` is measured, relative to the largest ``|h|``. ``eps`` is 1e-12, so exact
invariances show round-off only; a change below :func:`tolerance` (the square
root of the dtype's machine epsilon, 1.5e-8 in float64) counts as invariant.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

import normcore
from normcore._plumbing.compat import resolve_creation, to_numpy

from ._common import Progress, format_table, pyplot
from .batch_size import load_digit_vectors

__all__ = ["METHODS", "PAPER", "TRANSFORMATIONS", "Row", "format_rows", "measure", "plot_table"]

METHODS = ("batch norm", "weight norm", "layer norm")
TRANSFORMATIONS = (
    "weight matrix re-scaling",
    "weight matrix re-centering",
    "weight vector re-scaling",
    "dataset re-scaling",
    "dataset re-centering",
    "single training case re-scaling",
)
# Table 1 of the paper: True = invariant
PAPER = {
    "batch norm": (True, False, True, True, True, False),
    "weight norm": (True, False, True, False, False, False),
    "layer norm": (True, True, False, True, False, True),
}
EPS = 1e-12


class Row(NamedTuple):
    """One cell of Table 1: the paper's entry, the measured deviation and whether they agree."""

    method: str
    transformation: str
    paper_invariant: bool
    deviation: float  # max |h' - h| / max |h| over the trials
    measured_invariant: bool

    @property
    def agrees(self) -> bool:
        return self.paper_invariant == self.measured_invariant


def tolerance(dtype: str) -> float:
    """The largest relative change counted as round-off: ``sqrt(machine epsilon)``."""
    return float(np.sqrt(np.finfo(dtype).eps))


def _layer(xp: Any, method: str, x: Any, w: Any, gain: Any, bias: Any) -> Any:
    if method == "weight norm":
        a = xp.matmul(x, xp.permute_dims(normcore.weight_norm(w, gain, eps=EPS), (1, 0))) + bias
    else:
        a = xp.matmul(x, xp.permute_dims(w, (1, 0)))
        norm = normcore.batch_norm if method == "batch norm" else normcore.layer_norm
        a = norm(a, gain, bias, eps=EPS)
    return xp.maximum(a, xp.zeros_like(a))


def _transformations(rng: np.random.Generator, x: np.ndarray, w: np.ndarray) -> list:
    """``(x', W')`` for each of the six transformations, with random constants."""
    hidden, features = w.shape
    one_case = x.copy()
    one_case[rng.integers(len(x))] *= rng.uniform(1.5, 3.0)
    return [
        (x, w * rng.uniform(1.5, 3.0)),
        (x, w + rng.normal(size=(1, features))),  # the same vector added to every unit's row
        (x, w * rng.uniform(0.3, 3.0, size=(hidden, 1))),
        (x * rng.uniform(1.5, 3.0), w),
        (x + rng.normal(size=(1, features)), w),
        (one_case, w),
    ]


def measure(
    *,
    backend: Any = np,
    trials: int = 5,
    examples: int = 128,
    hidden: int = 32,
    seed: int = 0,
    dtype: str = "float64",
    data: dict | None = None,
    show_progress: bool = False,
) -> list[Row]:
    """Measure every cell of Table 1; return 18 :class:`Row` s (method-major order).

    Each trial draws a fresh subset of ``examples`` training digits, weights
    ``W`` (``hidden`` x 64), gain, bias and transformation constants from
    ``seed``; a row's deviation is the largest over the trials.
    """
    xp, device, dtype_ = resolve_creation(backend, None, dtype)
    data = load_digit_vectors(seed) if data is None else data
    rng = np.random.default_rng(seed)
    worst = {(m, t): 0.0 for m in METHODS for t in TRANSFORMATIONS}

    def run(method: str, x: np.ndarray, w: np.ndarray, gain: np.ndarray, bias: np.ndarray):
        arrays = (xp.asarray(a, dtype=dtype_, device=device) for a in (x, w, gain, bias))
        return to_numpy(_layer(xp, method, *arrays)).astype(np.float64)

    with Progress(trials, "invariance", disable=not show_progress) as bar:
        for _ in range(trials):
            x = data["x_train"][rng.choice(len(data["x_train"]), examples, replace=False)]
            w = rng.normal(size=(hidden, x.shape[1]))
            gain, bias = rng.uniform(0.5, 2.0, hidden), rng.normal(size=hidden)
            for method in METHODS:
                h = run(method, x, w, gain, bias)
                scale = np.max(np.abs(h))
                for name, (x2, w2) in zip(
                    TRANSFORMATIONS, _transformations(rng, x, w), strict=True
                ):
                    change = np.max(np.abs(run(method, x2, w2, gain, bias) - h)) / scale
                    worst[method, name] = max(worst[method, name], float(change))
            bar.update()
    limit = tolerance(dtype)
    return [
        Row(m, t, PAPER[m][i], worst[m, t], worst[m, t] <= limit)
        for m in METHODS
        for i, t in enumerate(TRANSFORMATIONS)
    ]


def format_rows(rows: list[Row]) -> str:
    """The table: method, transformation, the paper's entry, the measurement, the verdict."""
    cells = [
        (
            r.method,
            r.transformation,
            "invariant" if r.paper_invariant else "no",
            f"{r.deviation:.1e}",
            "invariant" if r.measured_invariant else "no",
            "agrees" if r.agrees else "DISAGREES",
        )
        for r in rows
    ]
    header = ("method", "transformation", "paper", "max rel. change", "measured", "verdict")
    return format_table(header, cells)


def plot_table(rows: list[Row], path: str, title: str = "") -> None:
    """Write a PNG heat map of log10(relative change), the paper's entry in each cell."""
    plt = pyplot()
    grid = np.array([[r.deviation for r in rows if r.method == m] for m in METHODS])
    logs = np.log10(np.maximum(grid, 1e-17))
    fig, ax = plt.subplots(figsize=(10, 3.2))
    image = ax.imshow(logs, cmap="viridis", vmin=-17, vmax=1, aspect="auto")
    for (i, j), value in np.ndenumerate(grid):
        row = rows[i * len(TRANSFORMATIONS) + j]
        paper = "inv." if row.paper_invariant else "no"
        mark = "" if row.agrees else " !"
        ax.text(j, i, f"{value:.0e}\npaper: {paper}{mark}", ha="center", va="center",
                color="white" if logs[i, j] < -8 else "black", fontsize=8)  # fmt: skip
    ax.set_xticks(
        range(len(TRANSFORMATIONS)), [t.replace(" re-", "\nre-") for t in TRANSFORMATIONS]
    )
    ax.set_yticks(range(len(METHODS)), METHODS)
    ax.tick_params(axis="x", labelsize=8)
    fig.colorbar(image, ax=ax, label="log10 max relative change")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

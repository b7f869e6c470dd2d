"""``python -m normcore bench``: normcore's speed and memory as ratios, checked against targets.

Every figure is a ratio measured side by side in one process, so the table
reads the same on a fast and on a slow machine: time over an allocating copy of
the input (the memory-bound limit), time against torch's native kernel on the
same data, and the peak memory a NumPy call allocates (``tracemalloc``) over
the size of its output (forward) or input (backward). Candidates are timed in
turns, repeat after repeat, and the medians compared, so that noise on a shared
machine hits them alike. The full asv suite (``asv_benchmarks/``) tracks the
same quantities over commits.
"""

from __future__ import annotations

import functools
import gc
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from . import baselines

__all__ = ["run"]

EPS = 1e-5


@dataclass(frozen=True)
class Figure:
    """One measured value, with the target it must meet (``limit``), if any."""

    value: float
    limit: float | None = None
    fmt: str = "{:.2f}"

    def passed(self) -> bool | None:
        return None if self.limit is None else self.value <= self.limit

    def render(self, graded: bool = True) -> str:
        text = self.fmt.format(self.value)
        if self.limit is None:
            return text
        target = f"{text} (<={self.fmt.format(self.limit)})"
        if not graded:
            return target
        return f"{target} {'PASS' if self.passed() else 'MISS'}"


@dataclass
class Row:
    method: str
    layout: str
    d: int
    backend: str
    direction: str
    time_s: float | None = None
    figures: dict[str, Figure] = field(default_factory=dict)
    note: str = ""


COLUMNS = ("x copy", "vs torch", "peak mem")

# Issue #16's targets for the NumPy rows (float32, 2**24 elements): time over an
# allocating copy, over torch's native kernel on the same memory (None: ungraded),
# and the peak memory over the output (forward) or input (backward) size.
TARGETS: dict[str, dict[str, float | None]] = {
    "layer_norm forward": {"copy": 1.0, "torch": 0.7, "memory": 1.25},
    "layer_norm backward": {"copy": 1.6, "torch": 1.0, "memory": 2.25},
    "rms_norm forward": {"copy": 1.0, "torch": None, "memory": 1.25},
    "batch_norm forward": {"copy": 1.2, "torch": 0.8, "memory": 1.25},
    "batch_norm backward": {"copy": None, "torch": None, "memory": 2.25},
    "group_norm forward": {"copy": 1.0, "torch": None, "memory": 1.25},
}
INTERLEAVE_COLUMNS = ("this side", "other side")


@dataclass(frozen=True)
class Plan:
    """Sizes and repetitions: the targets' sizes, or small ones for CI (``quick``)."""

    elements: int
    dims: tuple[int, ...]
    spatial: int
    repeats: int
    min_sample_s: float
    # The targets are set for 2**24 elements; small arrays show the ratios ungraded.
    graded: bool = True
    # Untimed turns of every candidate before the timed ones (see median_times).
    warmup_s: float = 0.0

    @classmethod
    def make(cls, quick: bool) -> Plan:
        if quick:
            return cls(
                2**16, (256, 1024, 4096), spatial=2, repeats=3, min_sample_s=0.002, graded=False
            )
        return cls(2**24, (256, 1024, 4096), spatial=8, repeats=5, min_sample_s=0.05, warmup_s=1.0)


# --- measuring -------------------------------------------------------------------------


def _sample(call: Callable[[], Any], number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        call()
    return (time.perf_counter() - start) / number


def median_times(calls: dict[str, Callable[[], Any]], plan: Plan) -> dict[str, float]:
    """Median seconds per call of each candidate, timed in turns (interleaved repeats)."""
    numbers = {}
    for name, call in calls.items():
        once = max(_sample(call, 1), 1e-7)  # also the warm-up: first-use costs stay out
        numbers[name] = max(1, int(plan.min_sample_s / once))
    # Untimed turns first. On the development machine (a virtual machine) the
    # first ~0.5 s of a new working set of fresh outputs ran at half speed (a
    # 2^24 layer norm: ~21 ms a call for its first 20 calls, then ~10 ms),
    # which a median of 5 turns did not hide: the bench's first row read
    # 2.5-2.8x a copy in every run, against 1.3x once warm.
    end = time.perf_counter() + plan.warmup_s
    while time.perf_counter() < end:
        for call in calls.values():
            call()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(plan.repeats):
        for name, call in calls.items():
            samples[name].append(_sample(call, numbers[name]))
    return {name: statistics.median(values) for name, values in samples.items()}


_SETTLE_S = 0.2


def interleaved_times(
    ours: Callable[[], Any], other: Callable[[], Any], plan: Plan
) -> dict[str, float]:
    """Median seconds per call of ``ours`` and ``other``, each alone and each beside the other.

    "Beside" times every call of an ``ours(); other()`` loop separately, so each
    side's figure includes whatever the other's threads left running (spinning
    OpenMP workers, a busy BLAS pool) and nothing of the other's own work.
    """
    pair = max(_sample(ours, 1) + _sample(other, 1), 1e-7)  # also the warm-up
    # Three times the repeats and at least three calls per sample: a ratio of two
    # noisy times needs more samples than one time does.
    number = max(3, int(plan.min_sample_s / pair))
    samples: dict[str, list[float]] = {
        k: [] for k in ("ours alone", "other alone", "ours beside", "other beside")
    }
    clock = time.perf_counter
    for _ in range(3 * plan.repeats):
        # Each "alone" sample starts after a pause and an untimed call of the same
        # function: a BLAS pool spins for up to about 0.1 s after its last call (and an
        # OpenMP team for its spin count), which would otherwise be timed as "alone".
        for name, call in (("ours alone", ours), ("other alone", other)):
            time.sleep(_SETTLE_S)
            call()
            samples[name].append(_sample(call, number))
        spent_ours = spent_other = 0.0
        for _ in range(number):
            start = clock()
            ours()
            middle = clock()
            other()
            spent_ours += middle - start
            spent_other += clock() - middle
        samples["ours beside"].append(spent_ours / number)
        samples["other beside"].append(spent_other / number)
    return {name: statistics.median(values) for name, values in samples.items()}


def peak_bytes(call: Callable[[], Any]) -> int:
    """Peak bytes traced while ``call`` runs (NumPy reports its buffers to tracemalloc)."""
    gc.collect()
    tracemalloc.start()
    try:
        result = call()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    del result
    return peak


# --- the libraries ------------------------------------------------------------------


def _data(shape: tuple[int, ...], seed: int, mean: float = 0.0, std: float = 1.0) -> np.ndarray:
    return baselines.random(shape, "float32", seed, mean, std)


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        return None
    return torch


# --- the cases ---------------------------------------------------------------------------


def _numpy_case(
    row: Row,
    ours: Callable[[], Any],
    torch_native: Callable[[], Any] | None,
    x: np.ndarray,
    plan: Plan,
    limits: dict[str, float | None],
    memory_base: int,
) -> Row:
    calls = {"copy": x.copy, "ours": ours}
    if torch_native is not None:
        calls["torch"] = torch_native
    times = median_times(calls, plan)
    row.time_s = times["ours"]
    row.figures["x copy"] = Figure(times["ours"] / times["copy"], limits["copy"])
    if torch_native is not None:
        row.figures["vs torch"] = Figure(times["ours"] / times["torch"], limits["torch"])
    row.figures["peak mem"] = Figure(peak_bytes(ours) / memory_base, limits["memory"])
    return row


def _layer_norm(x: Any, gain: Any, bias: Any) -> Any:
    return baselines.torch_layer_norm(x, gain, bias, EPS)


def _layer_norm_rows(plan: Plan, normcore: Any, torch: Any) -> Iterator[Row]:
    layer_norm = _layer_norm
    for d in plan.dims:
        shape = (plan.elements // d, d)
        x, dy = _data(shape, 0, mean=3.0), _data(shape, 1)
        gain, bias = _data((d,), 2, 1.0, 0.1), _data((d,), 3, 0.0, 0.1)
        native = native_bwd = None
        if torch is not None:
            tx, tdy, tgain, tbias = (torch.from_numpy(a) for a in (x, dy, gain, bias))
            native = functools.partial(layer_norm, tx, tgain, tbias)
            native_bwd = baselines.native_backward(layer_norm, tdy, tx, tgain, tbias)
        yield _numpy_case(
            Row("layer_norm", "N x D", d, "numpy", "forward"),
            functools.partial(normcore.layer_norm, x, gain, bias, eps=EPS),
            native,
            x,
            plan,
            TARGETS["layer_norm forward"],
            memory_base=x.nbytes,
        )
        yield _numpy_case(
            Row("layer_norm", "N x D", d, "numpy", "backward"),
            functools.partial(normcore.layer_norm_backward, dy, x, gain, bias, eps=EPS),
            native_bwd,
            x,
            plan,
            TARGETS["layer_norm backward"],
            memory_base=x.nbytes,
        )
        rms = None
        if torch is not None:
            rms = functools.partial(baselines.torch_rms_norm, tx, tgain, EPS)
        yield _numpy_case(
            Row("rms_norm", "N x D", d, "numpy", "forward"),
            functools.partial(normcore.rms_norm, x, gain, eps=EPS),
            rms,
            x,
            plan,
            TARGETS["rms_norm forward"],
            memory_base=x.nbytes,
        )
        if torch is not None:
            yield _torch_row(d, shape, (tx, tgain, tbias), normcore, layer_norm, plan)


def _torch_row(d, shape, tensors, normcore, layer_norm, plan) -> Row:
    """normcore.layer_norm on torch tensors against F.layer_norm: the adapter's overhead."""
    tx, tgain, tbias = tensors
    row = Row("layer_norm", "x".join(map(str, shape)), d, "torch", "forward")
    times = median_times(
        {
            "copy": tx.clone,
            "ours": lambda: normcore.layer_norm(tx, tgain, tbias, eps=EPS),
            "native": lambda: layer_norm(tx, tgain, tbias),
        },
        plan,
    )
    row.time_s = times["ours"]
    row.figures["x copy"] = Figure(times["ours"] / times["copy"])
    if shape == (64, 64):
        extra_us = (times["ours"] - times["native"]) * 1e6
        row.figures["vs torch"] = Figure(extra_us, 15.0, "{:+.1f} us")
    else:
        row.figures["vs torch"] = Figure(times["ours"] / times["native"], 1.10)
    return row


def _small_torch_row(plan: Plan, normcore: Any, torch: Any) -> Iterator[Row]:
    if torch is None:
        return
    tensors = tuple(torch.from_numpy(_data(s, i)) for i, s in enumerate([(64, 64), (64,), (64,)]))
    small = replace(plan, repeats=max(plan.repeats, 7))
    yield _torch_row(64, (64, 64), tensors, normcore, _layer_norm, small)


def _batch_norm_rows(plan: Plan, normcore: Any, torch: Any) -> Iterator[Row]:
    batch_norm = getattr(normcore, "batch_norm", None)
    batch_norm_backward = getattr(normcore, "batch_norm_backward", None)
    s = plan.spatial
    for layout, axis in (("NCHW", 1), ("NHWC", 3)):
        for c in plan.dims:
            n = max(2, plan.elements // (c * s * s))
            shape = (n, c, s, s) if axis == 1 else (n, s, s, c)
            if batch_norm is None or batch_norm_backward is None:
                note = "normcore.batch_norm/batch_norm_backward are not in this version"
                yield Row("batch_norm", layout, c, "numpy", "both", note=note)
                continue
            rows = [Row("batch_norm", layout, c, "numpy", d) for d in ("forward", "backward")]
            x, dy = _data(shape, 0, mean=3.0), _data(shape, 1)
            gain, bias = _data((c,), 2, 1.0, 0.1), _data((c,), 3, 0.0, 0.1)
            native = native_bwd = None
            if torch is not None:
                torch_batch_norm = functools.partial(baselines.torch_batch_norm, eps=EPS, axis=axis)
                tensors = [torch.from_numpy(a) for a in (x, gain, bias)]
                native = functools.partial(torch_batch_norm, *tensors)
                tdy = torch.from_numpy(dy)
                native_bwd = baselines.native_backward(torch_batch_norm, tdy, *tensors)
            yield _numpy_case(
                rows[0],
                functools.partial(batch_norm, x, gain, bias, axis=axis, eps=EPS),
                native,
                x,
                plan,
                TARGETS["batch_norm forward"],
                memory_base=x.nbytes,
            )
            yield _numpy_case(
                rows[1],
                functools.partial(batch_norm_backward, dy, x, gain, bias, axis=axis, eps=EPS),
                native_bwd,
                x,
                plan,
                TARGETS["batch_norm backward"],
                memory_base=x.nbytes,
            )


GROUPS = 32


def _group_norm_rows(plan: Plan, normcore: Any, torch: Any) -> Iterator[Row]:
    """Group norm forward, ``N x C x S x S`` with 32 groups, at each channel count."""
    s = plan.spatial
    for c in plan.dims:
        n = max(2, plan.elements // (c * s * s))
        x = _data((n, c, s, s), 0, mean=3.0)
        gain, bias = _data((c,), 2, 1.0, 0.1), _data((c,), 3, 0.0, 0.1)
        native = None
        if torch is not None:
            tensors = [torch.from_numpy(a) for a in (x, gain, bias)]
            native = functools.partial(baselines.torch_group_norm, tensors[0], GROUPS,
                                       *tensors[1:], EPS)  # fmt: skip
        yield _numpy_case(
            Row("group_norm", f"NCHW/{GROUPS}", c, "numpy", "forward"),
            functools.partial(normcore.group_norm, x, GROUPS, gain, bias, eps=EPS),
            native,
            x,
            plan,
            TARGETS["group_norm forward"],
            memory_base=x.nbytes,
        )


def _interleave_rows(plan: Plan, normcore: Any, torch: Any) -> Iterator[Row]:
    """normcore's layer norm in turns with torch's and with a BLAS matmul, in one process.

    Each side's time beside the other over its time alone: the cost of one
    library's threads (spinning, or still busy) to the other. The last row is
    the same figure for torch's layer norm beside the matmul, without normcore:
    the fight the two other libraries have with each other, for scale.
    """
    d = plan.dims[0]
    x = _data((plan.elements // d, d), 0, mean=3.0)
    gain, bias = _data((d,), 2, 1.0, 0.1), _data((d,), 3, 0.0, 0.1)
    side = 1024 if plan.graded else 128
    a, b = _data((side, side), 4), _data((side, side), 5)
    ours = functools.partial(normcore.layer_norm, x, gain, bias, eps=EPS)
    matmul = functools.partial(np.matmul, a, b)
    pairs = [(f"beside {side}^2 matmul", ours, matmul, "normcore")]
    if torch is not None:
        tensors = (torch.from_numpy(t) for t in (x, gain, bias))
        native = functools.partial(_layer_norm, *tensors)
        pairs.insert(0, ("beside torch LN", ours, native, "normcore"))
        pairs.append((f"beside {side}^2 matmul", native, matmul, "torch"))
    for layout, first, second, who in pairs:
        times = interleaved_times(first, second, plan)
        limit = 1.10 if who == "normcore" else None
        row = Row("layer_norm", layout, d, "numpy" if who == "normcore" else who, "forward")
        row.time_s = times["ours alone"]
        row.figures["this side"] = Figure(times["ours beside"] / times["ours alone"], limit)
        row.figures["other side"] = Figure(times["other beside"] / times["other alone"], limit)
        yield row


# --- the report --------------------------------------------------------------------------


def _table(rows: list[Row], graded: bool = True, columns: tuple[str, ...] = COLUMNS) -> list[str]:
    header = ["method", "layout", "D", "backend", "dir", "time", *columns]
    body = []
    for row in rows:
        time_text = "n/a" if row.time_s is None else f"{row.time_s * 1e3:.3f} ms"
        cells = [row.figures[c].render(graded) if c in row.figures else "" for c in columns]
        if row.note:
            cells = [row.note] + [""] * (len(columns) - 1)
        body.append([row.method, row.layout, str(row.d), row.backend, row.direction, time_text])
        body[-1].extend(cells)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in body]
    rule = "  ".join("-" * w for w in widths)
    head = "  ".join(cell.ljust(w) for cell, w in zip(header, widths, strict=True))
    return [head, rule, *lines]


def run(quick: bool = False, out: Any = None, plan: Plan | None = None) -> list[Row]:
    """Measure, print the ratio table to ``out`` (stdout) and return its rows.

    ``plan`` overrides the sizes and repetitions that ``quick`` selects.
    """
    import normcore

    out = sys.stdout if out is None else out
    plan = Plan.make(quick) if plan is None else plan
    torch = _torch()
    threads = "torch not installed" if torch is None else f"torch {torch.__version__}, "
    if torch is not None:
        threads += f"{torch.get_num_threads()} threads"
    print(
        f"normcore {normcore.__version__} bench: float32, {plan.elements} elements "
        f"per array, medians of {plan.repeats} interleaved repeats; "
        f"numpy {np.__version__}; {threads}; normcore's NumPy path: {_numpy_path(normcore)}",
        file=out,
    )
    print(
        "x copy: time / x.copy(); vs torch: time / torch.nn.functional on the same data "
        "(64x64: extra microseconds); peak mem: tracemalloc peak / output (forward) or "
        "input (backward) size",
        file=out,
        flush=True,
    )
    rows = []
    for group in (_layer_norm_rows, _small_torch_row, _batch_norm_rows, _group_norm_rows):
        rows.extend(group(plan, normcore, torch))
    print("\n".join(_table(rows, plan.graded)), file=out)
    print(
        "\ninterleaved in one process: this side's time per call beside the other library's "
        "calls (in turns) over its time alone, and the same for the other side",
        file=out,
        flush=True,
    )
    beside = list(_interleave_rows(plan, normcore, torch))
    print("\n".join(_table(beside, plan.graded, INTERLEAVE_COLUMNS)), file=out)
    rows.extend(beside)
    from . import bench_jax, bench_recurrent

    print(
        "\nrecurrent layers on NumPy arrays: normcore.LSTM's time over plain torch.nn.LSTM's "
        "(the same size; forward: eval() and no_grad; fwd+bwd: a training step), every call "
        "timed alone after a pause",
        file=out,
        flush=True,
    )
    recurrent = list(bench_recurrent.rows(plan, normcore, torch))
    print("\n".join(_table(recurrent, plan.graded, bench_recurrent.COLUMNS)), file=out)
    rows.extend(recurrent)
    print(
        f"\nJAX arrays, {plan.elements // 4} elements, calls finished by block_until_ready: "
        "normcore's time over flax.nnx's module (its default E[x**2]-E[x]**2 variance, and "
        "its two-pass one) and over jax.nn.standardize * gain + bias (eager: jnp op by op)",
        file=out,
        flush=True,
    )
    on_jax = list(bench_jax.rows(plan, normcore))
    print("\n".join(_table(on_jax, plan.graded, bench_jax.COLUMNS)), file=out)
    rows.extend(on_jax)
    if not plan.graded:
        print(
            f"--quick: {plan.elements} elements per array, far below the 2**24 the targets "
            "are set for, so the figures are not graded (run without --quick to check them)",
            file=out,
        )
        return rows
    verdicts = [f.passed() for row in rows for f in row.figures.values() if f.limit is not None]
    print(
        f"{verdicts.count(True)} PASS, {verdicts.count(False)} MISS "
        "(timings on a shared machine are noisy: rerun a MISS before trusting it)",
        file=out,
    )
    return rows


def _numpy_path(normcore: Any) -> str:
    """Which code the NumPy rows measure: the forced reference path or a kernel set."""
    if normcore.using_reference_path():
        return "the reference path (forced: NORMCORE_REFERENCE_PATH or reference_path())"
    from normcore.backends.numpy import adapter

    if adapter.kernel_set() == "numba":
        return "numba kernels (the default)"
    return "NumPy-only kernels (NORMCORE_NUMBA=0, or numba missing)"

"""``normcore check``: a quick conformance self-test of every installed adapter and device.

For each adapter whose library is installed and each device it reports, layer
norm, RMS norm and batch norm (batch statistics, and given ones) and their
backward run on a few shapes and layouts through the adapter's fast path and
through the reference path; both are compared with
each other and with a float64 NumPy computation written independently of
normcore's core (:mod:`normcore._tools.oracle`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np

from .._functional.batch_norm import batch_norm, batch_norm_backward
from .._functional.layer_norm import layer_norm, layer_norm_backward, rms_norm, rms_norm_backward
from .._plumbing.compat import to_numpy
from .._plumbing.config import reference_path
from .._plumbing.registry import adapters
from . import oracle

__all__ = ["CheckError", "Row", "check_rows", "format_table", "select_adapters"]

# Layer/RMS norm: (shape, normalized axes): N x D, N x C x H x W as in the paper, reversed axes.
ROW_CASES = (((4, 7), (-1,)), ((2, 3, 4, 5), (1, 2, 3)), ((3, 4, 5), (2, 1)))
# Batch norm: (shape, channel axis): NCHW, channels-last N x C, C in the middle of 3-D, and
# one NCHW batch large enough for kernels that serve only larger inputs (NumPy: 2**14).
CHANNEL_CASES = (((4, 3, 2, 5), 1), ((6, 3), -1), ((5, 4, 3), 1), ((64, 3, 12, 8), 1))
DTYPES = ("float32", "float64")
TOLERANCE = {"float32": 1e-4, "float64": 1e-9}
METHODS = ("layer_norm", "rms_norm", "batch_norm", "batch_norm_given_stats")
FUNCTIONS = tuple(f"{m}{suffix}" for m in METHODS for suffix in ("", "_backward"))


class CheckError(Exception):
    """A requested backend cannot be checked; the message says what to install."""


class Row(NamedTuple):
    """One line of the report: the worst case of one function on one device and dtype."""

    backend: str
    device: str
    dtype: str
    function: str
    fast_vs_reference: float | None
    error_vs_float64: float | None
    status: str  # "PASS", "FAIL" or "SKIP"
    note: str = ""


def _run(method, arrays, where):
    """Normcore's ``(y, dx, dgain, dbias)`` for arrays of any library (dbias None for RMS)."""
    x, dy, gain, bias, mean, var = arrays
    if method == "layer_norm":
        return [
            layer_norm(x, gain, bias, axis=where),
            *layer_norm_backward(dy, x, gain, bias, axis=where),
        ]
    if method == "rms_norm":
        return [rms_norm(x, gain, axis=where), *rms_norm_backward(dy, x, gain, axis=where)]
    given = {"mean": mean, "var": var} if method == "batch_norm_given_stats" else {}
    y = batch_norm(x, gain, bias, axis=where, **given)
    return [y, *batch_norm_backward(dy, x, gain, bias, axis=where, **given)]


def _max_diff(a: list, b: list) -> float:
    return max(float(np.max(np.abs(p - q), initial=0.0)) for p, q in zip(a, b, strict=True))


def _cases(method: str) -> Iterator[tuple[tuple[int, ...], Any, tuple[int, ...], list[int]]]:
    """``(shape, normcore's axis argument, normalized axes, parameter axes in gain's order)``."""
    if method in ("layer_norm", "rms_norm"):
        for shape, axes in ROW_CASES:
            order = [a % len(shape) for a in axes]
            yield shape, axes, tuple(sorted(order)), order
    else:
        for shape, axis in CHANNEL_CASES:
            channel = axis % len(shape)
            yield shape, axis, tuple(a for a in range(len(shape)) if a != channel), [channel]


def _broadcast(param: np.ndarray, order: list[int], ndim: int) -> np.ndarray:
    """``param`` (dims in ``order``) laid out to broadcast against x."""
    in_x_order = np.transpose(param, np.argsort(order))
    shape = [1] * ndim
    for a in sorted(order):
        shape[a] = in_x_order.shape[sorted(order).index(a)]
    return in_x_order.reshape(shape)


def _check_device(adapter: Any, xp: Any, device: Any, dtype: str) -> Iterator[Row]:
    rng = np.random.default_rng(1607)
    label = str(device)
    worst = {name: [0.0, 0.0, ""] for name in FUNCTIONS}
    for method in METHODS:
        center = method != "rms_norm"
        eps = 1e-5 if center else 1e-6
        for shape, where, axes, order in _cases(method):
            pshape = tuple(shape[a] for a in order)
            host = [
                rng.normal(0.5, 2.0, size=shape).astype(dtype),
                rng.normal(size=shape).astype(dtype),
                rng.normal(1.0, 0.3, size=pshape).astype(dtype),
                rng.normal(0.0, 0.3, size=pshape).astype(dtype),
                rng.normal(0.5, 1.0, size=pshape).astype(dtype),
                rng.uniform(0.5, 2.0, size=pshape).astype(dtype),
            ]
            wide = [a.astype(np.float64) for a in host]
            params = [_broadcast(a, order, len(shape)) for a in wide[2:]]
            stats = params[2:] if method == "batch_norm_given_stats" else None
            bias = params[1] if center else None
            expected = oracle.normalization(
                wide[0], wide[1], params[0], bias, axes, eps, center, stats
            )
            # dgain/dbias come out in x's axis order; normcore's follow the parameters'
            back = [sorted(order).index(a) for a in order]
            expected[2:] = [None if g is None else np.transpose(g, back) for g in expected[2:]]
            arrays = [xp.asarray(a, device=device) for a in host]
            try:
                fast = _run(method, arrays, where)
                with reference_path():
                    reference = _run(method, arrays, where)
            except Exception as error:  # report it as a failure and go on with the rest
                for key in (method, f"{method}_backward"):
                    worst[key][2] = f"{type(error).__name__}: {error}"
                continue
            for key, part in (
                (method, slice(0, 1)),
                (f"{method}_backward", slice(1, 4 if center else 3)),
            ):
                got_fast = [to_numpy(a).astype(np.float64) for a in fast[part]]
                got_ref = [to_numpy(a).astype(np.float64) for a in reference[part]]
                worst[key][0] = max(worst[key][0], _max_diff(got_fast, got_ref))
                worst[key][1] = max(
                    worst[key][1],
                    _max_diff(got_fast, expected[part]),
                    _max_diff(got_ref, expected[part]),
                )
    for name in FUNCTIONS:
        vs_ref, vs_f64, note = worst[name]
        if note:
            yield Row(adapter.name, label, dtype, name, None, None, "FAIL", note)
        else:
            tol = TOLERANCE[dtype]
            status = "PASS" if max(vs_ref, vs_f64) <= tol else "FAIL"
            yield Row(adapter.name, label, dtype, name, vs_ref, vs_f64, status)


def select_adapters(backend: str | None) -> list:
    """All registered adapters, or only ``backend``.

    Raises :class:`CheckError` naming what to install when ``backend`` is
    unknown or its library is not installed (also used by ``normcore experiment``).
    """
    found = adapters()
    if backend is None:
        return found
    chosen = [a for a in found if a.name == backend]
    if not chosen:
        names = ", ".join(a.name for a in found)
        raise CheckError(f"unknown backend {backend!r}; the registered adapters are: {names}")
    adapter = chosen[0]
    if adapter.library_version() is None:
        raise CheckError(
            f"backend {backend!r} needs {adapter.library}, which is not installed: "
            f"{adapter.install_hint}"
        )
    return chosen


def check_rows(backend: str | None = None) -> Iterator[Row]:
    """Run the self-test; yield one row per adapter, device, dtype and function.

    Adapters whose library is not installed give one row noting it, unless
    ``backend`` names one of them, which raises :class:`CheckError` (as does an
    unknown ``backend``) before anything runs.
    """
    for adapter in select_adapters(backend):
        if adapter.library_version() is None:
            yield Row(adapter.name, "-", "-", "-", None, None, "SKIP", "library not installed")
            continue
        try:
            xp = adapter.namespace()
            devices = adapter.check_devices()
        except Exception as error:  # a broken installation is a failure, not a crash
            yield Row(adapter.name, "-", "-", "-", None, None, "FAIL", f"cannot start: {error}")
            continue
        for device in devices:
            for dtype in DTYPES:
                try:  # a dtype the library has but is not set up for (JAX's float64)
                    adapter.check_dtype(xp, getattr(xp, dtype))
                except TypeError as error:
                    yield Row(adapter.name, str(device), dtype, "-", None, None, "SKIP", str(error))
                    continue
                yield from _check_device(adapter, xp, device, dtype)


def format_table(rows: list[Row]) -> list[str]:
    """Return the report's lines: a header and one aligned line per row."""
    header = ("backend", "device", "dtype", "function", "fast vs ref", "vs float64", "result")

    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.1e}"

    table = [header] + [
        (
            r.backend,
            r.device,
            r.dtype,
            r.function,
            number(r.fast_vs_reference),
            number(r.error_vs_float64),
            r.status + (f"  {r.note}" if r.note else ""),
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(header) - 1)]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(line[:-1], widths, strict=True))
        + "  "
        + line[-1]
        for line in table
    ]

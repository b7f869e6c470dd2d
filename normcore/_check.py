"""``normcore check``: a quick conformance self-test of every installed adapter and device.

For each adapter whose library is installed and each device it reports, layer
and RMS normalization and their backward run on a few shapes through the
adapter's fast path and through the reference path; both are compared with
each other and with a float64 NumPy computation written here, independently of
normcore's core (an oracle that shares the core's code would share its bugs).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np

from ._compat import resolve_creation, to_numpy
from ._layer import layer_norm, layer_norm_backward, rms_norm, rms_norm_backward
from ._registry import adapters, reference_path

__all__ = ["CheckError", "Row", "check_rows", "format_table", "select_adapters"]

# (shape, normalized axes): N x D, N x C x H x W as in the paper, reversed axes
CASES = (((4, 7), (-1,)), ((2, 3, 4, 5), (1, 2, 3)), ((3, 4, 5), (2, 1)))
DTYPES = ("float32", "float64")
TOLERANCE = {"float32": 1e-4, "float64": 1e-9}
FUNCTIONS = ("layer_norm", "layer_norm_backward", "rms_norm", "rms_norm_backward")


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


def _oracle(x, dy, gain, bias, axes, eps, center):
    """Float64 ``(y, dx, dgain, dbias)`` of layer/RMS norm, normalized axes moved last."""
    k = len(axes)
    last = tuple(range(x.ndim - k, x.ndim))
    t, d = np.moveaxis(x, axes, last), np.moveaxis(dy, axes, last)
    mean = t.mean(axis=last, keepdims=True) if center else 0.0
    rstd = 1.0 / np.sqrt(((t - mean) ** 2).mean(axis=last, keepdims=True) + eps)
    xhat = (t - mean) * rstd
    y = xhat * gain + (bias if center else 0.0)
    dxhat = d * gain
    inner = dxhat - xhat * (dxhat * xhat).mean(axis=last, keepdims=True)
    if center:
        inner = inner - dxhat.mean(axis=last, keepdims=True)
    others = tuple(range(x.ndim - k))
    back = [np.moveaxis(y, last, axes), np.moveaxis(rstd * inner, last, axes)]
    return [*back, (d * xhat).sum(axis=others), d.sum(axis=others)]


def _run(center, x, dy, gain, bias, axes):
    """Normcore's ``(y, dx, dgain, dbias)`` for arrays of any library (dbias None for RMS)."""
    if center:
        y = layer_norm(x, gain, bias, axis=axes)
        return [y, *layer_norm_backward(dy, x, gain, bias, axis=axes)]
    y = rms_norm(x, gain, axis=axes)
    return [y, *rms_norm_backward(dy, x, gain, axis=axes)]


def _max_diff(a: list, b: list) -> float:
    return max(float(np.max(np.abs(p - q), initial=0.0)) for p, q in zip(a, b, strict=True))


def _check_device(adapter: Any, xp: Any, device: Any, dtype: str) -> Iterator[Row]:
    rng = np.random.default_rng(1607)
    label = str(device)
    worst = {name: [0.0, 0.0, ""] for name in FUNCTIONS}
    for shape, axes in CASES:
        pshape = tuple(shape[a] for a in axes)
        host = [
            rng.normal(0.5, 2.0, size=shape).astype(dtype),
            rng.normal(size=shape).astype(dtype),
            rng.normal(1.0, 0.3, size=pshape).astype(dtype),
            rng.normal(0.0, 0.3, size=pshape).astype(dtype),
        ]
        arrays = [xp.asarray(a, device=device) for a in host]
        for center, name in ((True, "layer_norm"), (False, "rms_norm")):
            eps = 1e-5 if center else 1e-6
            expected = _oracle(*(a.astype(np.float64) for a in host), axes, eps, center)
            try:
                fast = _run(center, *arrays, axes)
                with reference_path():
                    reference = _run(center, *arrays, axes)
            except Exception as error:  # report it as a failure and go on with the rest
                for key in (name, f"{name}_backward"):
                    worst[key][2] = f"{type(error).__name__}: {error}"
                continue
            for key, part in (
                (name, slice(0, 1)),
                (f"{name}_backward", slice(1, 4 if center else 3)),
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
            module = importlib.import_module(adapter.library)
            xp = resolve_creation(module)[0]
            devices = adapter.check_devices()
        except Exception as error:  # a broken installation is a failure, not a crash
            yield Row(adapter.name, "-", "-", "-", None, None, "FAIL", f"cannot start: {error}")
            continue
        for device in devices:
            for dtype in DTYPES:
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

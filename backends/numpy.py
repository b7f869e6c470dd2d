"""Adapter for NumPy arrays: fused, blocked, multi-threaded kernels for common layouts.

The kernels in :mod:`normcore.backends._numpy_kernels` cover the layer/RMS
norm layout (statistics over trailing axes, parameters on the same axes) and
the batch-norm layout (parameters on one axis, statistics over all the
others, e.g. NCHW or NHWC). Every other call, and any input that is not
C-contiguous, runs the reference path. NumPy is imported only when a NumPy
array reaches normcore.

Kernel selection (``_kernels``, the one place it happens): setting the
environment variable ``NORMCORE_NUMBA=1`` (install the ``numba`` extra)
switches to the compiled kernels of :mod:`normcore.backends._numba_kernels`
(same interface and numerical contract; float16 is handed to the NumPy
kernels, numba has no CPU float16). They are opt-in because numba's OpenMP
worker threads keep spinning for a while after each kernel, which on small
machines slows torch and other threaded code in the same process. The
variable is read on every call; numba is imported only when a NumPy array
first reaches a fast path with it set, and the first call per dtype compiles
the kernels (or loads them from numba's on-disk cache).
"""

from __future__ import annotations

import functools
import math
import os
import sys
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from normcore._adapter import Adapter
from normcore._primitive import Gradients, Normalized

__all__ = ["NumPyAdapter", "adapter"]


def _kernels():
    """The kernel module to use: numba's when NORMCORE_NUMBA=1 and numba imports, else NumPy's."""
    if os.environ.get("NORMCORE_NUMBA", "").strip().lower() in {"1", "true", "yes", "on"}:
        try:
            import numba  # noqa: F401 (a missing or broken numba is the user's to fix)
        except Exception as error:
            _warn_numba_missing(f"{type(error).__name__}: {error}")
        else:
            from . import _numba_kernels  # an error here is normcore's: it propagates

            return _numba_kernels
    from . import _numpy_kernels

    return _numpy_kernels


@functools.cache
def _warn_numba_missing(reason: str) -> None:
    warnings.warn(
        f"NORMCORE_NUMBA=1 asks for the numba kernels, but numba cannot be imported ({reason}; "
        "pip install numba, or the 'numba' extra); using the NumPy kernels",
        RuntimeWarning,
        stacklevel=4,
    )


def _supported(*arrays: Any) -> bool:
    numpy = sys.modules["numpy"]
    floats = (numpy.float16, numpy.float32, numpy.float64)
    return all(
        a is None or (a.dtype in floats and a.flags.c_contiguous and a.dtype.isnative)
        for a in arrays
    )


def _rows_layout(x: Any, reduce_axes: tuple[int, ...], param_axes: tuple[int, ...]) -> bool:
    """Layer/RMS norm: statistics over trailing axes, parameters on the same axes."""
    return param_axes == reduce_axes and reduce_axes == tuple(
        range(x.ndim - len(reduce_axes), x.ndim)
    )


def _channel_axis(x: Any, reduce_axes: tuple[int, ...], param_axes: tuple[int, ...]) -> int | None:
    """Batch norm: the one parameter axis when statistics span every other axis."""
    if len(param_axes) != 1 or len(reduce_axes) != x.ndim - 1 or param_axes[0] in reduce_axes:
        return None
    return param_axes[0]


def _as_channels(a: Any, axis: int) -> Any:
    """View a C-contiguous array as (A, C, B) around ``axis``."""
    shape = a.shape
    return a.reshape(math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1 :]))


def _flat(a: Any) -> Any:
    return None if a is None else a.reshape(-1)


def _keepdims(v: Any, x: Any, axes_kept: tuple[int, ...]) -> Any:
    """Reshape per-row or per-channel statistics to broadcast against ``x``."""
    if v is None:
        return None
    return v.reshape(tuple(n if a in axes_kept else 1 for a, n in enumerate(x.shape)))


def _normalize(
    xp, adapter, x, gain, bias, *, reduce_axes, param_axes, center, eps, stats=None,
    need_stats=False, correction=0.0,
):  # fmt: skip
    if correction or not _supported(x, gain, bias):
        return NotImplemented  # the kernels compute the biased variance only
    kernels = _kernels()
    if stats is None and not need_stats and _rows_layout(x, reduce_axes, param_axes):
        width = math.prod(x.shape[a] for a in reduce_axes)
        y, _, _ = kernels.rows_forward(
            x.reshape(-1, width), _flat(gain), _flat(bias), eps=eps, center=center
        )
        return Normalized(y.reshape(x.shape), None, None)
    axis = _channel_axis(x, reduce_axes, param_axes)
    if axis is None or not center:
        return NotImplemented
    given = {} if stats is None else {"mean": _flat(stats.mean), "var": _flat(stats.var)}
    y, mean, var = kernels.channels_forward(_as_channels(x, axis), gain, bias, eps=eps, **given)
    return Normalized(y.reshape(x.shape), _keepdims(mean, x, (axis,)), _keepdims(var, x, (axis,)))


def _normalize_backward(
    xp, adapter, dy, x, gain, *, reduce_axes, param_axes, center, eps, stats=None,
    correction=0.0, need_dgain, need_dbias, bias_dtype=None,
):  # fmt: skip
    if correction or not _supported(dy, x, gain) or dy.dtype != x.dtype:
        return NotImplemented
    kernels = _kernels()
    param_shape = tuple(x.shape[a] for a in param_axes)
    if stats is None and _rows_layout(x, reduce_axes, param_axes):
        width = math.prod(param_shape)
        dx, dgain, dbias = kernels.rows_backward(
            dy.reshape(-1, width), x.reshape(-1, width), _flat(gain), eps=eps, center=center,
            need_dgain=need_dgain, need_dbias=need_dbias,
        )  # fmt: skip
    else:
        axis = _channel_axis(x, reduce_axes, param_axes)
        if axis is None or not center:
            return NotImplemented
        given = {} if stats is None else {"mean": _flat(stats.mean), "var": _flat(stats.var)}
        dx, dgain, dbias = kernels.channels_backward(
            _as_channels(dy, axis), _as_channels(x, axis), gain, eps=eps,
            need_dgain=need_dgain, need_dbias=need_dbias, fixed_stats=stats is not None, **given,
        )  # fmt: skip
    if dbias is not None and bias_dtype is not None:
        dbias = dbias.astype(bias_dtype, copy=False)
    return Gradients(
        dx.reshape(x.shape),
        None if dgain is None else dgain.reshape(param_shape),
        None if dbias is None else dbias.reshape(param_shape),
    )


class NumPyAdapter(Adapter):
    """NumPy: CPU arrays; fused kernels for layer/RMS and batch-norm layouts."""

    name = "numpy"
    library = "numpy"

    def owns(self, x: Any) -> bool:
        numpy = sys.modules["numpy"]
        return isinstance(x, numpy.ndarray | numpy.generic)

    def devices(self) -> list[str]:
        return ["cpu"]

    def fast_paths(self) -> Mapping[str, Callable[..., Any]]:
        return {"normalize": _normalize, "normalize_backward": _normalize_backward}


adapter = NumPyAdapter()

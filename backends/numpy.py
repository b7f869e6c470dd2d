"""Adapter for NumPy arrays: fused, blocked, multi-threaded kernels for common layouts.

The kernels in :mod:`normcore.backends._numpy_kernels` cover the layer/RMS
norm layout (statistics over trailing axes, parameters on the same axes) and
the batch-norm layout (parameters on one axis, statistics over all the
others, e.g. NCHW or NHWC). The numba kernels also cover group norm's
forward (each example's group a row) and the LSTM cell's steps
(:meth:`NumPyAdapter.cell_step`, :meth:`NumPyAdapter.cell_step_backward`).
Every other call, any input that is not C-contiguous, and batch-norm inputs
too small for the channel kernels' fixed costs to pay off
(:attr:`NumPyAdapter.small_channels`) run the reference path. NumPy is
imported only when a NumPy array reaches normcore.

Kernel selection (``_kernels``, the one place it happens): by default the
compiled kernels of :mod:`normcore.backends._numba_kernels` run (same
interface and numerical contract; float16 is handed to the NumPy kernels,
numba has no CPU float16). ``NORMCORE_NUMBA=0`` (read at ``import normcore``)
selects the NumPy-only kernels of :mod:`normcore.backends._numpy_kernels`,
which also run, with a warning, when numba cannot be imported. Both kernel
sets run on one thread pool, not numba's OpenMP threads (see
``_numba_kernels``), so that they do not fight torch's or the BLAS's
threads. numba is imported when a NumPy array first reaches a kernel
(about 0.2 s), and the first call per dtype compiles the kernels, or loads
them from numba's on-disk cache.
"""

from __future__ import annotations

import math
import sys
import threading
import warnings
from types import ModuleType
from typing import Any

from normcore._plumbing.config import settings
from normcore._reference.cells import exp_cap  # the bound of the reference's sigmoid
from normcore.adapter import Adapter, Gradients, Layout, Normalized

__all__ = ["NumPyAdapter", "adapter"]


def _kernels() -> ModuleType:
    """The kernel module NumPy arrays run on under the current setting (it may change)."""
    return _kernel_module(settings.numba)


_chosen: dict[bool, ModuleType] = {}
_choosing = threading.Lock()


def _kernel_module(numba_on: bool) -> ModuleType:
    """numba's kernels when on and importable, else NumPy's; decided once per setting.

    Remembered: a warm call pays a dictionary lookup, not an import statement.
    The first calls decide under a lock, so that a missing numba warns once
    per process even when several threads make their first call at once.
    """
    try:
        return _chosen[numba_on]
    except KeyError:
        pass
    with _choosing:
        if numba_on not in _chosen:
            _chosen[numba_on] = _choose_kernels(numba_on)
        return _chosen[numba_on]


_kernel_module.cache_clear = _chosen.clear  # type: ignore[attr-defined]  # for tests


def _choose_kernels(numba_on: bool) -> ModuleType:
    if numba_on:
        try:
            import numba  # noqa: F401 (a missing or broken numba is the user's to fix)
        except Exception as error:
            warnings.warn(
                f"numba cannot be imported ({type(error).__name__}: {error}), so NumPy arrays "
                "run on normcore's NumPy-only kernels, about half as fast: reinstall numba (a "
                "dependency of normcore), or set NORMCORE_NUMBA=0 to choose those kernels "
                "without this warning",
                RuntimeWarning,
                stacklevel=_caller_outside_normcore(),
            )
        else:
            from . import _numba_kernels  # an error here is normcore's: it propagates

            return _numba_kernels
    from . import _numpy_kernels

    return _numpy_kernels


def _caller_outside_normcore() -> int:
    """The ``stacklevel`` of the first frame outside normcore, for a warning of our caller.

    Modules, group norm and torch tensors reach the kernels through more of
    normcore's frames than the functional NumPy calls do: a fixed stacklevel
    pointed inside normcore for them.
    """
    frame, level = sys._getframe(1), 1  # our caller: the function that warns
    while frame is not None and frame.f_globals.get("__name__", "").startswith("normcore"):
        frame, level = frame.f_back, level + 1
    return level


def _supported(*arrays: Any) -> bool:
    numpy = sys.modules["numpy"]
    floats = (numpy.float16, numpy.float32, numpy.float64)
    return all(
        a is None or (a.dtype in floats and a.flags.c_contiguous and a.dtype.isnative)
        for a in arrays
    )


def _as_channels(a: Any, axis: int) -> Any:
    """View a C-contiguous array as (A, C, B) around ``axis``."""
    shape = a.shape
    return a.reshape(math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1 :]))


def _flat(a: Any) -> Any:
    return None if a is None else a.reshape(-1)


def _keepdims(v: Any, x: Any, axis: int) -> Any:
    """Reshape per-channel statistics to broadcast against ``x``."""
    if v is None:
        return None
    return v.reshape(tuple(n if a == axis else 1 for a, n in enumerate(x.shape)))


def _overflowed(rstd: Any) -> bool:
    """Whether a statistic's variance overflowed (or was NaN): its ``rstd`` is 0 or NaN.

    The kernels then decline and the reference path runs, which recomputes
    such statistics on scaled values (see ``normcore._reference.primitive``).
    """
    return not rstd.min() > 0


def _group_layout(x: Any, layout: Layout) -> bool:
    """Group norm's layout: x as (N, G, C/G, *S), statistics over (2, ...), parameters (G, C/G)."""
    return (
        x.ndim >= 3
        and layout.param_axes == (1, 2)
        and layout.reduce_axes == tuple(range(2, x.ndim))
        and x.size > 0
    )


def _fusable(*arrays: Any) -> bool:
    """Whether the fused recurrent kernels take these arrays (None entries aside).

    C-contiguous, one float32 or float64 dtype (numba has no float16), and
    not empty (dask's metadata calls pass empty batches).
    """
    present = [a for a in arrays if a is not None]
    numpy = sys.modules["numpy"]
    dtype = present[0].dtype
    return (
        dtype in (numpy.float32, numpy.float64)
        and present[0].size > 0
        and all(a.dtype == dtype for a in present)
        and _supported(*present)
    )


def _given(layout: Layout) -> dict[str, Any]:
    stats = layout.stats
    return {} if stats is None else {"mean": _flat(stats.mean), "var": _flat(stats.var)}


class NumPyAdapter(Adapter):
    """NumPy: CPU arrays; fused kernels for layer/RMS and batch-norm layouts."""

    name = "numpy"
    library = "numpy"
    #: Batch-norm inputs with fewer elements run the reference path: below about
    #: this size the channel kernels' fixed costs (tiling, per-task partial
    #: statistics, their merge) exceed the reference's whole-array ufunc calls.
    #: Measured side by side (forward and backward, NC and NCHW, float32): the
    #: kernels win from 2**14 elements on; the row kernels win at every size.
    small_channels = 1 << 14

    def owns(self, x: Any) -> bool:
        numpy = sys.modules["numpy"]
        return isinstance(x, numpy.ndarray | numpy.generic)

    def devices(self) -> list[str]:
        return ["cpu"]

    def overflow_ignored(self):
        return sys.modules["numpy"].errstate(over="ignore", invalid="ignore")

    def kernel_set(self) -> str:
        """The kernels NumPy arrays run on now: ``"numba"`` or ``"numpy"``."""
        return "numba" if _kernels().__name__.endswith("_numba_kernels") else "numpy"

    def normalize(self, xp, x, gain, bias, layout, *, need_stats=False):
        # The kernels compute the biased variance only.
        if layout.correction or not _supported(x, gain, bias):
            return NotImplemented
        numpy, kernels = sys.modules["numpy"], _kernels()
        if layout.stats is None and not need_stats and layout.is_trailing(x.ndim):
            width = layout.count(x.shape)
            y, _, rstd = kernels.rows_forward(
                x.reshape(-1, width), _flat(gain), _flat(bias), eps=layout.eps, center=layout.center
            )
            if _overflowed(rstd):
                return NotImplemented
            return Normalized(y.reshape(x.shape), None, None)
        if _group_layout(x, layout) and layout.stats is None and not need_stats:
            return self._groups(kernels, x, gain, bias, layout)
        axis = layout.channel_axis(x.ndim)
        if axis is None or not layout.center or x.size < self.small_channels:
            return NotImplemented
        y, mean, var = kernels.channels_forward(
            _as_channels(x, axis), gain, bias, eps=layout.eps, **_given(layout)
        )
        if layout.stats is None and not numpy.isfinite(var).all():
            return NotImplemented
        return Normalized(y.reshape(x.shape), _keepdims(mean, x, axis), _keepdims(var, x, axis))

    def normalize_backward(self, xp, dy, x, gain, bias, layout):
        if layout.correction or dy.dtype != x.dtype or not _supported(dy, x, gain):
            return NotImplemented
        numpy, kernels = sys.modules["numpy"], _kernels()
        need = {"need_dgain": gain is not None, "need_dbias": bias is not None}
        acc = self.accumulation_dtype(xp, x.dtype)
        if layout.stats is None and layout.is_trailing(x.ndim):
            width = layout.count(x.shape)
            rstd = numpy.empty(x.size // width, acc)
            dx, dgain, dbias = kernels.rows_backward(
                dy.reshape(-1, width), x.reshape(-1, width), _flat(gain), eps=layout.eps,
                center=layout.center, rstd_out=rstd, **need,
            )  # fmt: skip
        elif _group_layout(x, layout) and layout.stats is None:
            fused = getattr(kernels, "groups_backward", None)  # the numba kernels only
            if fused is None or x.dtype == numpy.float16 or not layout.center:
                return NotImplemented
            n, groups = x.shape[0], x.shape[1]
            dx, dgain, dbias, rstd = fused(
                dy.reshape(n * groups, -1), x.reshape(n * groups, -1), gain, eps=layout.eps,
                groups=groups, spatial=math.prod(x.shape[3:]), **need,
            )  # fmt: skip
        else:
            axis = layout.channel_axis(x.ndim)
            if axis is None or not layout.center or x.size < self.small_channels:
                return NotImplemented
            rstd = numpy.empty(x.shape[axis], acc)
            dx, dgain, dbias = kernels.channels_backward(
                _as_channels(dy, axis), _as_channels(x, axis), gain, eps=layout.eps,
                fixed_stats=layout.stats is not None, rstd_out=rstd, **need, **_given(layout),
            )  # fmt: skip
        if layout.stats is None and _overflowed(rstd):
            return NotImplemented
        param_shape = tuple(x.shape[a] for a in layout.param_axes)
        return Gradients(
            dx.reshape(x.shape),
            None if dgain is None else dgain.reshape(param_shape),
            None if dbias is None else dbias.astype(bias.dtype, copy=False).reshape(param_shape),
        )

    def _groups(self, kernels, x, gain, bias, layout):
        """Group norm's forward on the numba kernels (the NumPy-only set has none)."""
        fused = getattr(kernels, "groups_forward", None)
        if fused is None or x.dtype == sys.modules["numpy"].float16 or not layout.center:
            return NotImplemented
        n, groups = x.shape[0], x.shape[1]
        rows = x.reshape(n * groups, -1)
        spatial = math.prod(x.shape[3:])
        y, rstd = fused(rows, gain, bias, eps=layout.eps, groups=groups, spatial=spatial)
        if _overflowed(rstd):
            return NotImplemented
        return Normalized(y.reshape(x.shape), None, None)

    def cell_step(self, xp, cell, ctx, u, ah, state, save):
        fused = getattr(_kernels(), "lstm_step", None)  # the numba kernels only
        if cell != "lstm" or fused is None:
            return NotImplemented
        names = ("gain_h", "bias_h", "gain_c", "bias_c")
        params = tuple(ctx.params[n] for n in names) if ctx.layer_norm else (None,) * 4
        c_prev = state[1]
        if not _fusable(u, ah, c_prev, *params):
            return NotImplemented
        result = fused(u, ah, c_prev, *params, eps=ctx.eps, exp_cap=exp_cap(xp, u.dtype))
        if result is None:
            return NotImplemented  # a variance overflowed: the reference scales its statistics
        h, c, gates_if, g, o, squashed = result
        if not save:
            return (h, c), None
        ln = ctx.layer_norm
        return (h, c), (ah if ln else None, c_prev, gates_if, g, o, c if ln else None, squashed)

    def cell_step_backward(self, xp, cell, ctx, saved, dnew):
        fused = getattr(_kernels(), "lstm_step_backward", None)  # the numba kernels only
        if cell != "lstm" or fused is None:
            return NotImplemented
        ah, c_prev, gates_if, g, o, c, squashed = saved
        dh, dc = dnew
        gains = (ctx.params["gain_h"], ctx.params["gain_c"]) if ctx.layer_norm else (None, None)
        if not _fusable(*saved, *dnew, *gains):
            return NotImplemented
        du, dah, dc_prev, grads, rstds = fused(
            ah, c_prev, gates_if, g, o, c, squashed, dh, dc, *gains, eps=ctx.eps
        )
        if ctx.layer_norm and any(_overflowed(r) for r in rstds):
            return NotImplemented  # the reference recomputes such statistics scaled
        return du, dah, (None, dc_prev), grads


adapter = NumPyAdapter()

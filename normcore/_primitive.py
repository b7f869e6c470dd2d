"""The normalization primitive and its backward, written once against the Array API.

Layer, RMS, batch, group and instance normalization are all this computation
with different axes:

* statistics of ``x`` over ``reduce_axes`` (kept as broadcastable dimensions),
* ``xhat = (x - mean) * rstd`` with ``rstd = 1 / sqrt(var + eps)`` (RMS norm:
  no centering, ``var`` is the mean square),
* ``y = xhat * gain + bias`` with ``gain``/``bias`` spanning ``param_axes``.

Its backward is one formula as well (``m_R`` is the mean over ``reduce_axes``)::

    dxhat = dy * gain
    dx    = rstd * (dxhat - m_R(dxhat) - xhat * m_R(dxhat * xhat))   # batch statistics
    dx    = rstd * dxhat                                              # fixed statistics

(RMS norm drops the ``m_R(dxhat)`` term.) A ``correction`` ``k`` divides the
sum of squares by ``count - k`` instead of ``count`` (``k = 1``: the unbiased
variance batch norm uses at small batches in Ba et al., 2016); the last term of
the backward is then scaled by ``count / (count - k)``. Statistics are accumulated in the
adapter's accumulation dtype (float32 for float16/bfloat16) and results are cast
back to the input's dtype. Adapters may register faster kernels for these two
functions (see ``normcore._dispatch``); this module is the reference they are
tested against.
"""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = [
    "Gradients",
    "Normalized",
    "Statistics",
    "centered_moments",
    "normalize",
    "normalize_backward",
]


class Normalized(NamedTuple):
    """Output of :func:`normalize`: ``y`` and the statistics it used.

    ``mean`` and ``var`` (the biased variance; the mean square for RMS norm)
    are broadcastable to ``x`` and in the accumulation dtype. ``mean`` is None
    for RMS norm. A fast path may leave both None unless it was called with
    ``need_stats=True``.
    """

    y: Any
    mean: Any
    var: Any


class Statistics(NamedTuple):
    """Given statistics, broadcastable to ``x`` (keepdims shape)."""

    mean: Any  # None for RMS norm
    var: Any


class Gradients(NamedTuple):
    """Gradients of a normalization with respect to its input and parameters.

    ``dgain``/``dbias`` are None when the corresponding parameter was None.
    """

    dx: Any
    dgain: Any
    dbias: Any


def default_accumulation_dtype(xp: Any, dtype: Any) -> Any:
    """float32 for floats narrower than 32 bits (float16, bfloat16), else ``dtype``."""
    return xp.float32 if xp.finfo(dtype).bits < 32 else dtype


def accumulation_dtype(xp: Any, adapter: Any, dtype: Any) -> Any:
    """Return the dtype statistics of ``dtype`` data accumulate in (the adapter's policy)."""
    if adapter is not None:
        return adapter.accumulation_dtype(xp, dtype)
    return default_accumulation_dtype(xp, dtype)


def _astype(xp: Any, x: Any, dtype: Any) -> Any:
    return x if x.dtype == dtype else xp.astype(x, dtype)


def _first_along(x: Any, axes: tuple[int, ...]) -> Any:
    index = tuple(slice(0, 1) if a in axes else slice(None) for a in range(x.ndim))
    return x[index]


def centered_moments(
    xp: Any, x: Any, axes: tuple[int, ...], correction: float = 0.0
) -> tuple[Any, Any, Any]:
    """Return ``(mean, x - mean, var)`` over ``axes`` with dimensions kept.

    Two passes over data shifted by its first element along ``axes``: the
    shift keeps large-mean data accurate and makes a constant slice give an
    exactly zero ``x - mean`` (so its normalized output is exactly the bias).
    ``var`` divides the sum of squares by ``count - correction``.
    """
    shift = _first_along(x, axes)
    shifted = x - shift
    offset = xp.mean(shifted, axis=axes, keepdims=True)
    centered = shifted - offset
    var = xp.sum(centered * centered, axis=axes, keepdims=True) / (_count(x, axes) - correction)
    return shift + offset, centered, var


def broadcast_param(xp: Any, param: Any, param_axes: tuple[int, ...], ndim: int) -> Any:
    """Reshape a parameter whose dimensions follow ``param_axes`` to broadcast against x."""
    order = sorted(range(len(param_axes)), key=param_axes.__getitem__)
    if order != list(range(len(order))):
        param = xp.permute_dims(param, tuple(order))
    shape = [1] * ndim
    for dim, axis in enumerate(sorted(param_axes)):
        shape[axis] = param.shape[dim]
    return xp.reshape(param, tuple(shape))


def _sum_to_param(xp: Any, t: Any, param_axes: tuple[int, ...]) -> Any:
    """Sum ``t`` over every axis outside ``param_axes``; dimensions in ``param_axes`` order."""
    others = tuple(a for a in range(t.ndim) if a not in param_axes)
    total = xp.sum(t, axis=others) if others else t
    ordered = sorted(param_axes)
    perm = tuple(ordered.index(a) for a in param_axes)
    return xp.permute_dims(total, perm) if perm != tuple(range(len(perm))) else total


def _rstd(xp: Any, var: Any, eps: float) -> Any:
    return 1.0 / xp.sqrt(var + eps)


def _count(x: Any, axes: tuple[int, ...]) -> int:
    count = 1
    for a in axes:
        count *= x.shape[a]
    return count


def _standardize(
    xp: Any,
    xa: Any,
    reduce_axes: tuple[int, ...],
    center: bool,
    eps: float,
    stats: Any,
    correction: float = 0.0,
) -> tuple[Any, Any, Any, Any]:
    """Return ``(xhat, mean, var, rstd)`` for ``xa`` already in the accumulation dtype."""
    if stats is None:
        if center:
            mean, centered, var = centered_moments(xp, xa, reduce_axes, correction)
        else:
            mean, centered = None, xa
            var = xp.mean(xa * xa, axis=reduce_axes, keepdims=True)
            if correction:
                count = _count(xa, reduce_axes)
                var = var * (count / (count - correction))
    else:
        mean = None if stats.mean is None else _astype(xp, stats.mean, xa.dtype)
        var = _astype(xp, stats.var, xa.dtype)
        centered = xa - mean if center else xa
    rstd = _rstd(xp, var, eps)
    return centered * rstd, mean, var, rstd


def normalize(
    xp: Any,
    adapter: Any,
    x: Any,
    gain: Any,
    bias: Any,
    *,
    reduce_axes: tuple[int, ...],
    param_axes: tuple[int, ...],
    center: bool,
    eps: float,
    stats: Statistics | None = None,
    need_stats: bool = False,
    correction: float = 0.0,
) -> Normalized:
    """Reference forward of the normalization primitive (arguments already validated).

    ``reduce_axes`` are sorted non-negative axes; ``param_axes`` are the axes of
    ``x`` that ``gain``/``bias`` span, in the order of their dimensions.
    ``stats`` fixes the statistics (inference); otherwise they are computed
    from ``x``, the variance dividing by ``count - correction``. The reference
    always returns the statistics it used; ``need_stats`` tells a fast path
    that the caller needs them too.
    """
    acc = accumulation_dtype(xp, adapter, x.dtype)
    xa = _astype(xp, x, acc)
    xhat, mean, var, _ = _standardize(xp, xa, reduce_axes, center, eps, stats, correction)
    y = xhat
    if gain is not None:
        y = y * broadcast_param(xp, _astype(xp, gain, acc), param_axes, x.ndim)
    if bias is not None:
        y = y + broadcast_param(xp, _astype(xp, bias, acc), param_axes, x.ndim)
    return Normalized(_astype(xp, y, x.dtype), mean, var)


def normalize_backward(
    xp: Any,
    adapter: Any,
    dy: Any,
    x: Any,
    gain: Any,
    *,
    reduce_axes: tuple[int, ...],
    param_axes: tuple[int, ...],
    center: bool,
    eps: float,
    stats: Statistics | None = None,
    correction: float = 0.0,
    need_dgain: bool,
    need_dbias: bool,
    bias_dtype: Any = None,
) -> Gradients:
    """Reference backward of :func:`normalize` (arguments already validated).

    With ``stats`` given the statistics are constants and the gradient does not
    flow through them; otherwise it does (the full formula, with ``correction``
    as in the forward).
    """
    acc = accumulation_dtype(xp, adapter, x.dtype)
    xa = _astype(xp, x, acc)
    xhat, _, _, rstd = _standardize(xp, xa, reduce_axes, center, eps, stats, correction)
    grad = _astype(xp, dy, acc)
    dgain = _sum_to_param(xp, grad * xhat, param_axes) if need_dgain else None
    dbias = _sum_to_param(xp, grad, param_axes) if need_dbias else None
    if gain is not None:
        grad = grad * broadcast_param(xp, _astype(xp, gain, acc), param_axes, x.ndim)
    if stats is None:
        projection = xp.mean(grad * xhat, axis=reduce_axes, keepdims=True)
        if correction:
            # d var / d x carries 1 / (count - correction), not m_R's 1 / count
            count = _count(xa, reduce_axes)
            projection = projection * (count / (count - correction))
        inner = grad - xhat * projection
        if center:
            inner = inner - xp.mean(grad, axis=reduce_axes, keepdims=True)
        grad = inner
    dx = grad * rstd
    param_dtype = x.dtype if gain is None else gain.dtype
    return Gradients(
        _astype(xp, dx, x.dtype),
        None if dgain is None else _astype(xp, dgain, param_dtype),
        None if dbias is None else _astype(xp, dbias, bias_dtype or param_dtype),
    )

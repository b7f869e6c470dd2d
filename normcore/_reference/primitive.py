"""The normalization primitive and its backward, written once against the Array API.

Layer, RMS, batch, group and instance normalization are all this computation
with different axes (a :class:`~normcore.adapter.Layout`):

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
variance batch norm uses at small batches in Ba et al., 2016); the last term
of the backward is then scaled by ``count / (count - k)``. Statistics are
accumulated in the adapter's accumulation dtype (float32 for float16/bfloat16)
and results are cast back to the input's dtype. Adapters may implement faster
kernels with the same signatures (:class:`normcore.adapter.Adapter`); this
module is the reference they are tested against.
"""

from __future__ import annotations

from typing import NamedTuple

from ..adapter import Adapter, Gradients, Layout, Normalized
from ..typing import Array, DType, Namespace
from .moments import (
    first_along,
    overflow_limit,
    overflow_scale,
    power_of_two_scale,
    shifted_mean,
)

__all__ = ["as_dtype", "broadcast_param", "normalize", "normalize_backward", "sum_to_param"]


def as_dtype(xp: Namespace, x: Array, dtype: DType) -> Array:
    """``x`` in ``dtype`` (``x`` itself when it already is)."""
    return x if x.dtype == dtype else xp.astype(x, dtype)


def broadcast_param(xp: Namespace, param: Array, param_axes: tuple[int, ...], ndim: int) -> Array:
    """Reshape a parameter whose dimensions follow ``param_axes`` to broadcast against x."""
    order = sorted(range(len(param_axes)), key=param_axes.__getitem__)
    if order != list(range(len(order))):
        param = xp.permute_dims(param, tuple(order))
    shape = [1] * ndim
    for dim, axis in enumerate(sorted(param_axes)):
        shape[axis] = param.shape[dim]
    return xp.reshape(param, tuple(shape))


def sum_to_param(xp: Namespace, t: Array, param_axes: tuple[int, ...]) -> Array:
    """Sum ``t`` over every axis outside ``param_axes``; dimensions in ``param_axes`` order."""
    others = tuple(a for a in range(t.ndim) if a not in param_axes)
    total = xp.sum(t, axis=others) if others else t
    ordered = sorted(param_axes)
    perm = tuple(ordered.index(a) for a in param_axes)
    return xp.permute_dims(total, perm) if perm != tuple(range(len(perm))) else total


def _standardize(
    adapter: Adapter, xp: Namespace, x: Array, layout: Layout
) -> tuple[Array, Array | None, Array, Array]:
    """Return ``(xhat, mean, var, rstd)`` of ``x``, in the accumulation dtype.

    Batch statistics never overflow for finite data: where a statistic's
    values are so large that their squares would leave the dtype's range, it
    is computed on its values divided by a power of two
    (:func:`~.moments.overflow_scale`). The statistics are computed as they
    are first; those whose variance is not finite are redone scaled (with
    concrete values, ``adapter.is_concrete``: a branch on the host). Lazy and
    traced values (dask, ``jax.jit``, ``torch.compile``) take the scaled
    statistics at once, with no branch on values (one more reduction,
    :func:`_traced_scale`), where the scale is one wherever the values are
    small, and so give the same results there. A
    constant statistic is never scaled: it cannot overflow (its centered
    values are exactly 0), and so its rstd stays ``1 / sqrt(eps)`` for
    autodiff as well. The overflow of a first try is not reported
    (``adapter.overflow_ignored``): the result does not overflow.
    """
    xa = as_dtype(xp, x, adapter.accumulation_dtype(xp, x.dtype))
    stats = layout.stats
    if stats is not None:
        mean = None if stats.mean is None else as_dtype(xp, stats.mean, xa.dtype)
        var = as_dtype(xp, stats.var, xa.dtype)
        centered = xa - mean if layout.center else xa
        rstd = 1.0 / xp.sqrt(var + layout.eps)
        return centered * rstd, mean, var, rstd
    with adapter.overflow_ignored():
        if adapter.is_concrete(x):
            moments = _moments(xp, xa, layout, None)
            finite = xp.isfinite(moments.var)
            if not bool(xp.all(finite)):  # only the statistics that overflowed
                count = layout.count(tuple(xa.shape))
                scale = overflow_scale(xp, xa, layout.reduce_axes, count, where=~finite)
                moments = _moments(xp, xa, layout, scale)
        else:
            moments = _moments(xp, xa, layout, _traced_scale(xp, xa, layout))
        return _normalized(xp, xa, moments), moments.mean, moments.var, moments.rstd


def _traced_scale(xp: Namespace, xa: Array, layout: Layout) -> Array:
    """The scale of every statistic that may overflow, decided without reading values.

    One reduction: with ``d = x - x[first]``, ``spread = max|d|`` bounds what
    the centered sums see and ``|x[first]| + spread`` every ``|x|``. A
    constant statistic has spread 0 and is never scaled. RMS norm squares
    ``x`` itself: its bound is ``max|x|``. (A conditional that ran the
    rescaled statistics only when needed, ``jax.lax.cond``, was measured
    slower on the CPU: it keeps XLA from fusing the statistics' passes.)
    """
    axes = layout.reduce_axes
    limit = overflow_limit(xp, xa.dtype, layout.count(tuple(xa.shape)))
    if not layout.center:
        amax = xp.max(xp.abs(xa), axis=axes, keepdims=True)
        return power_of_two_scale(xp, amax, amax > limit)
    first = first_along(xa, axes)
    spread = xp.max(xp.abs(xa - first), axis=axes, keepdims=True)
    return power_of_two_scale(xp, xp.abs(first) + spread, spread > limit)


class _Moments(NamedTuple):
    """A batch's statistics, with what forming ``xhat`` needs (:func:`_normalized`).

    ``xhat = ((x * inverse - shift) - offset) * scaled_rstd``: ``inverse`` is
    ``1 / scale`` (None: no scaling), ``shift`` the first value and ``offset``
    the mean of the shifted scaled values (both None for RMS norm),
    ``scaled_rstd`` the scaled values' ``1 / sqrt(var + eps / scale**2)``.
    ``mean``, ``var`` and ``rstd`` are the statistics of ``x`` itself.
    """

    inverse: Array | None
    shift: Array | None
    offset: Array | None
    scaled_rstd: Array
    mean: Array | None
    var: Array
    rstd: Array


def _moments(xp: Namespace, xa: Array, layout: Layout, scale: Array | None) -> _Moments:
    """The statistics of ``xa``, computed on ``xa / scale`` (a power of two per statistic).

    Normalization does not change when a statistic's values and its ``eps``
    are divided by the same factor (``eps / scale**2``, kept at least the
    smallest normal number, as the eps rule keeps ``eps``). A scaled
    statistic is never constant, so its scaled variance is at least about the
    square of its values' last place, which that floor (or ``eps / scale**2``
    itself, below ``eps / 1e17**2`` in float32) cannot change. ``mean``,
    ``var`` and ``rstd`` are scaled back (a variance beyond the dtype's range
    is then infinite: it is not representable, the normalization still is).
    """
    axes, correction, eps = layout.reduce_axes, layout.correction, layout.eps
    inverse = None if scale is None else 1.0 / scale  # a normal power of two: exact
    xs = xa if inverse is None else xa * inverse
    if scale is not None:
        eps = eps * inverse * inverse
        eps = xp.maximum(eps, xp.full_like(eps, xp.finfo(xa.dtype).smallest_normal))
    count = layout.count(tuple(xa.shape))
    if layout.center:
        # The first values of the scaled x taken as the scaled first values of x (equal
        # exactly: the scale is a power of two): a slice of the scaled array made XLA
        # materialize it, which took jit(layer_norm) from 4.1 ms to 9.4 ms (2**22 float32).
        first = first_along(xa, axes)
        shift, offset, centered = shifted_mean(
            xp, xs, axes, first if inverse is None else first * inverse
        )
        squares = centered * centered
    else:
        shift = offset = None
        squares = xs * xs
    var = xp.sum(squares, axis=axes, keepdims=True) / (count - correction)
    scaled_rstd = 1.0 / xp.sqrt(var + eps)
    mean = None if shift is None else shift + offset
    rstd = scaled_rstd
    if scale is not None:
        mean = None if mean is None else mean * scale
        var, rstd = var * scale * scale, scaled_rstd * inverse
    return _Moments(inverse, shift, offset, scaled_rstd, mean, var, rstd)


def _normalized(xp: Namespace, xa: Array, m: _Moments) -> Array:
    """``xhat`` from :func:`_moments`: centered (or not) in the scaled units, times rstd."""
    xs = xa if m.inverse is None else xa * m.inverse
    centered = xs if m.shift is None else (xs - m.shift) - m.offset
    return centered * m.scaled_rstd


def normalize(
    adapter: Adapter,
    xp: Namespace,
    x: Array,
    gain: Array | None,
    bias: Array | None,
    layout: Layout,
    *,
    need_stats: bool = False,
) -> Normalized:
    """The reference forward of the primitive: :meth:`normcore.adapter.Adapter.normalize`'s
    signature with the adapter first (public as :func:`normcore.adapter.reference_normalize`).

    Array API operations only; statistics accumulate in
    ``adapter.accumulation_dtype``. Always returns the statistics it used
    (``need_stats`` changes nothing here).
    """
    acc = adapter.accumulation_dtype(xp, x.dtype)
    xhat, mean, var, _ = _standardize(adapter, xp, x, layout)
    y = xhat
    if gain is not None:
        y = y * broadcast_param(xp, as_dtype(xp, gain, acc), layout.param_axes, x.ndim)
    if bias is not None:
        y = y + broadcast_param(xp, as_dtype(xp, bias, acc), layout.param_axes, x.ndim)
    return Normalized(as_dtype(xp, y, x.dtype), mean, var)


def normalize_backward(
    adapter: Adapter,
    xp: Namespace,
    dy: Array,
    x: Array,
    gain: Array | None,
    bias: Array | None,
    layout: Layout,
) -> Gradients:
    """The reference backward: :meth:`normcore.adapter.Adapter.normalize_backward`'s signature
    with the adapter first (public as :func:`normcore.adapter.reference_normalize_backward`).

    With ``layout.stats`` the statistics are constants and the gradient does
    not flow through them; otherwise it does (the full formula, with
    ``correction`` as in the forward). ``dgain``/``dbias`` are computed where
    ``gain``/``bias`` are given, in their dtypes.
    """
    acc = adapter.accumulation_dtype(xp, x.dtype)
    param_axes, reduce_axes = layout.param_axes, layout.reduce_axes
    xhat, _, _, rstd = _standardize(adapter, xp, x, layout)
    grad = as_dtype(xp, dy, acc)
    dgain = None if gain is None else sum_to_param(xp, grad * xhat, param_axes)
    dbias = None if bias is None else sum_to_param(xp, grad, param_axes)
    if gain is not None:
        grad = grad * broadcast_param(xp, as_dtype(xp, gain, acc), param_axes, x.ndim)
    if layout.stats is None:
        projection = xp.mean(grad * xhat, axis=reduce_axes, keepdims=True)
        if layout.correction:
            # d var / d x carries 1 / (count - correction), not m_R's 1 / count
            count = layout.count(tuple(x.shape))
            projection = projection * (count / (count - layout.correction))
        inner = grad - xhat * projection
        if layout.center:
            inner = inner - xp.mean(grad, axis=reduce_axes, keepdims=True)
        grad = inner
    dx = grad * rstd
    return Gradients(
        as_dtype(xp, dx, x.dtype),
        None if dgain is None else as_dtype(xp, dgain, gain.dtype),
        None if dbias is None else as_dtype(xp, dbias, bias.dtype),
    )

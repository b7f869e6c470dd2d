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

from ..adapter import Adapter, Gradients, Layout, Normalized
from ..typing import Array, DType, Namespace
from .moments import centered_moments

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


def _standardize(xp: Namespace, xa: Array, layout: Layout) -> tuple[Array, Array, Array, Array]:
    """Return ``(xhat, mean, var, rstd)`` for ``xa`` already in the accumulation dtype."""
    axes, correction = layout.reduce_axes, layout.correction
    if layout.stats is None:
        if layout.center:
            mean, centered, var = centered_moments(xp, xa, axes, correction)
        else:
            mean, centered = None, xa
            var = xp.mean(xa * xa, axis=axes, keepdims=True)
            if correction:
                count = layout.count(tuple(xa.shape))
                var = var * (count / (count - correction))
    else:
        stats = layout.stats
        mean = None if stats.mean is None else as_dtype(xp, stats.mean, xa.dtype)
        var = as_dtype(xp, stats.var, xa.dtype)
        centered = xa - mean if layout.center else xa
    rstd = 1.0 / xp.sqrt(var + layout.eps)
    return centered * rstd, mean, var, rstd


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
    xhat, mean, var, _ = _standardize(xp, as_dtype(xp, x, acc), layout)
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
    xhat, _, _, rstd = _standardize(xp, as_dtype(xp, x, acc), layout)
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

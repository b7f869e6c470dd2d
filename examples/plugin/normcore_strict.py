"""A complete normcore backend plugin: array_api_strict arrays with a fast layer-norm path.

array_api_strict already runs on normcore's reference path without any
plugin; this one adds a shorter kernel for the layer/RMS-norm layout
(statistics and parameters on the trailing axes) and declines everything else
with ``NotImplemented``, which sends those calls to the reference. It imports
only normcore's public plugin API, ``normcore.adapter``.
"""

from normcore.adapter import Adapter, Gradients, Normalized


def _statistics(xp, xa, layout):
    """``(xhat, rstd)`` over the trailing reduce axes, two passes over shifted data."""
    axes = layout.reduce_axes
    if layout.center:
        # Shift by the first value of each row: constant rows then give exactly 0.
        first = xa[(..., *([slice(0, 1)] * len(axes)))]
        shifted = xa - first
        centered = shifted - xp.mean(shifted, axis=axes, keepdims=True)
    else:
        centered = xa
    rstd = 1.0 / xp.sqrt(xp.mean(centered * centered, axis=axes, keepdims=True) + layout.eps)
    return centered * rstd, rstd


def _overflowed(xp, rstd):
    """Whether a variance overflowed (or was NaN): its rstd is 0 or NaN.

    The contract asks a fast path for the reference's results on every finite
    input; for values whose squares leave the dtype's range the reference
    rescales, so here the call is declined and the reference runs.
    """
    return not bool(xp.all(rstd > 0))


class StrictAdapter(Adapter):
    name = "strict"
    library = "array_api_strict"

    def owns(self, x):
        # Asked only once array_api_strict is imported, and once per array type.
        return type(x).__module__.startswith("array_api_strict")

    def overflow_ignored(self):
        # array_api_strict computes with NumPy, whose overflow warnings a first try at
        # statistics beyond the dtype's range (here, and in the reference) would print.
        import numpy

        return numpy.errstate(over="ignore", invalid="ignore")

    def normalize(self, xp, x, gain, bias, layout, *, need_stats=False):
        if layout.stats is not None or layout.correction or need_stats:
            return NotImplemented
        if not layout.is_trailing(x.ndim):
            return NotImplemented
        acc = self.accumulation_dtype(xp, x.dtype)
        with self.overflow_ignored():
            xhat, rstd = _statistics(xp, xp.astype(x, acc), layout)
        if _overflowed(xp, rstd):
            return NotImplemented
        y = xhat if gain is None else xhat * xp.astype(gain, acc)
        y = y if bias is None else y + xp.astype(bias, acc)
        return Normalized(xp.astype(y, x.dtype), None, None)

    def normalize_backward(self, xp, dy, x, gain, bias, layout):
        if layout.stats is not None or layout.correction or not layout.is_trailing(x.ndim):
            return NotImplemented
        acc = self.accumulation_dtype(xp, x.dtype)
        axes, lead = layout.reduce_axes, tuple(range(x.ndim - len(layout.reduce_axes)))
        with self.overflow_ignored():
            xhat, rstd = _statistics(xp, xp.astype(x, acc), layout)
        if _overflowed(xp, rstd):
            return NotImplemented
        grad = xp.astype(dy, acc)
        dgain = None if gain is None else xp.astype(xp.sum(grad * xhat, axis=lead), gain.dtype)
        dbias = None if bias is None else xp.astype(xp.sum(grad, axis=lead), bias.dtype)
        dxhat = grad if gain is None else grad * xp.astype(gain, acc)
        inner = dxhat - xhat * xp.mean(dxhat * xhat, axis=axes, keepdims=True)
        if layout.center:
            inner = inner - xp.mean(dxhat, axis=axes, keepdims=True)
        return Gradients(xp.astype(inner * rstd, x.dtype), dgain, dbias)


adapter = StrictAdapter()

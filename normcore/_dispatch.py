"""Run a primitive on the adapter's fast path when it has one, else on the reference.

Zero-size inputs are answered here, once for every method: an empty output
(still connected to the inputs for autograd), and zero gradients for the
parameters (the sum over no values).
"""

from __future__ import annotations

import math
from typing import Any

from . import _primitive
from ._compat import device_of
from ._registry import fast_path

__all__ = ["is_empty", "normalize", "normalize_backward"]


def is_empty(x: Any) -> bool:
    """Return whether the array ``x`` has no elements."""
    return math.prod(x.shape) == 0


def normalize(xp: Any, adapter: Any, x: Any, gain: Any, bias: Any, **layout: Any):
    """Forward of the normalization primitive; see :func:`normcore._primitive.normalize`."""
    if is_empty(x):
        return _primitive.Normalized(
            _empty_output(xp, x, gain, bias, layout["param_axes"]), None, None
        )
    fast = fast_path(adapter, "normalize")
    if fast is not None:
        result = fast(xp, adapter, x, gain, bias, **layout)
        if result is not NotImplemented:
            return result
    return _primitive.normalize(xp, adapter, x, gain, bias, **layout)


def normalize_backward(xp: Any, adapter: Any, dy: Any, x: Any, gain: Any, **layout: Any):
    """Backward of the primitive; see :func:`normcore._primitive.normalize_backward`."""
    if is_empty(x):
        return _empty_gradients(xp, x, gain, **layout)
    fast = fast_path(adapter, "normalize_backward")
    if fast is not None:
        result = fast(xp, adapter, dy, x, gain, **layout)
        if result is not NotImplemented:
            return result
    return _primitive.normalize_backward(xp, adapter, dy, x, gain, **layout)


def _empty_output(xp, x, gain, bias, param_axes):
    """An empty ``y`` computed from the inputs, so an autograd graph reaches them.

    (torch: a backward through an empty batch then gives empty ``dx`` and zero
    parameter gradients, as ``torch.nn`` does, instead of failing.)
    """
    y = x * 0
    for param in (gain, bias):
        if param is not None:
            y = y + _primitive.broadcast_param(xp, param, param_axes, x.ndim) * 0
    return y if y.dtype == x.dtype else xp.astype(y, x.dtype)


def _empty_gradients(xp, x, gain, *, param_axes, need_dgain, need_dbias, bias_dtype=None, **_):
    shape = tuple(x.shape[a] for a in param_axes)
    param_dtype = x.dtype if gain is None else gain.dtype
    device = device_of(x)

    def zeros(dtype):
        return xp.zeros(shape, dtype=dtype, device=device)

    return _primitive.Gradients(
        xp.zeros_like(x),
        zeros(param_dtype) if need_dgain else None,
        zeros(bias_dtype or param_dtype) if need_dbias else None,
    )

"""Run the primitive on the adapter's fast path when it has one, else on the reference.

This is the only place a fast path is chosen. Zero-size inputs are answered
here, once for every method: an empty output (still connected to the inputs
for autograd), and zero gradients for the parameters (the sum over no values).
"""

from __future__ import annotations

import math

from .._reference import primitive
from ..adapter import Gradients, Layout, Normalized
from ..typing import Array, Namespace
from .compat import device_of
from .config import using_reference_path

__all__ = ["is_empty", "normalize", "normalize_backward"]


def is_empty(x: Array) -> bool:
    """Return whether the array ``x`` has no elements."""
    return math.prod(x.shape) == 0


# The signatures are the primitive's (normcore.adapter.Adapter.normalize/normalize_backward
# with the adapter first), not repeated here: one contract, one reference implementation.
def normalize(adapter, xp, x, gain, bias, layout, *, need_stats=False) -> Normalized:
    """Forward of the primitive: ``adapter.normalize``, or the reference when it declines."""
    if is_empty(x):
        return Normalized(_empty_output(xp, x, gain, bias, layout), None, None)
    if not using_reference_path():
        result = adapter.normalize(xp, x, gain, bias, layout, need_stats=need_stats)
        if result is not NotImplemented:
            return result
    return primitive.normalize(adapter, xp, x, gain, bias, layout, need_stats=need_stats)


def normalize_backward(adapter, xp, dy, x, gain, bias, layout) -> Gradients:
    """Backward of the primitive: ``adapter.normalize_backward``, or the reference."""
    if is_empty(x):
        return _empty_gradients(xp, x, gain, bias, layout)
    if not using_reference_path():
        result = adapter.normalize_backward(xp, dy, x, gain, bias, layout)
        if result is not NotImplemented:
            return result
    return primitive.normalize_backward(adapter, xp, dy, x, gain, bias, layout)


def _empty_output(xp: Namespace, x: Array, gain: Array | None, bias: Array | None, layout: Layout):
    """An empty ``y`` computed from the inputs, so an autograd graph reaches them.

    (torch: a backward through an empty batch then gives empty ``dx`` and zero
    parameter gradients, as ``torch.nn`` does, instead of failing.)
    """
    y = x * 0
    for param in (gain, bias):
        if param is not None:
            y = y + primitive.broadcast_param(xp, param, layout.param_axes, x.ndim) * 0
    return primitive.as_dtype(xp, y, x.dtype)


def _empty_gradients(
    xp: Namespace, x: Array, gain: Array | None, bias: Array | None, layout: Layout
) -> Gradients:
    shape = tuple(x.shape[a] for a in layout.param_axes)
    device = device_of(x)
    return Gradients(
        xp.zeros_like(x),
        None if gain is None else xp.zeros(shape, dtype=gain.dtype, device=device),
        None if bias is None else xp.zeros(shape, dtype=bias.dtype, device=device),
    )

"""Run the primitive on the adapter's fast path when it has one, else on the reference.

This is the only place a fast path is chosen. Zero-size inputs are answered
here, once for every method: an empty output (still connected to the inputs
for autograd), and zero gradients for the parameters (the sum over no values).
"""

from __future__ import annotations

import math
from dataclasses import replace

from .._reference import moments as reference_moments
from .._reference import primitive
from ..adapter import Gradients, Layout, Normalized, Statistics
from ..typing import Array, Namespace
from .compat import device_of, namespace_of
from .config import using_reference_path

__all__ = [
    "adopted",
    "cell_step",
    "cell_step_backward",
    "custom_gradient",
    "is_empty",
    "map_batches",
    "moments",
    "normalize",
    "normalize_backward",
    "settle",
]


def is_empty(x: Array) -> bool:
    """Return whether the array ``x`` has no elements."""
    return math.prod(x.shape) == 0


# The signatures are the primitive's (normcore.adapter.Adapter.normalize/normalize_backward
# with the adapter first), not repeated here: one contract, one reference implementation.
def normalize(adapter, xp, x, gain, bias, layout, *, need_stats=False) -> Normalized:
    """Forward of the primitive: ``adapter.normalize``, or the reference when it declines."""
    gain, bias, layout = adopted(adapter, xp, x, gain, bias, layout)
    if is_empty(x):
        return Normalized(_empty_output(xp, x, gain, bias, layout), None, None)
    if not using_reference_path():
        result = adapter.normalize(xp, x, gain, bias, layout, need_stats=need_stats)
        if result is not NotImplemented:
            return result
    return primitive.normalize(adapter, xp, x, gain, bias, layout, need_stats=need_stats)


def normalize_backward(adapter, xp, dy, x, gain, bias, layout) -> Gradients:
    """Backward of the primitive: ``adapter.normalize_backward``, or the reference."""
    gain, bias, layout = adopted(adapter, xp, x, gain, bias, layout)
    dy = adopt(adapter, xp, x, dy)
    if is_empty(x):
        return _empty_gradients(xp, x, gain, bias, layout)
    if not using_reference_path():
        result = adapter.normalize_backward(xp, dy, x, gain, bias, layout)
        if result is not NotImplemented:
            return result
    return primitive.normalize_backward(adapter, xp, dy, x, gain, bias, layout)


def moments(adapter, xp, x, axes) -> tuple[int, Array, Array]:
    """``(count, mean, M2)`` over ``axes``: ``adapter.moments``, or the reference two passes."""
    if not is_empty(x) and not using_reference_path():
        result = adapter.moments(xp, x, axes)
        if result is not NotImplemented:
            return result
    return reference_moments.moment_sums(xp, x, axes)


def cell_step(adapter, cell, ctx, u, ah, state, save):
    """One recurrent step's forward: ``adapter.cell_step``, or the cell's own ``step``."""
    if not using_reference_path():
        result = adapter.cell_step(ctx.xp, cell.name, ctx, u, ah, state, save)
        if result is not NotImplemented:
            return result
    return cell.step(ctx, u, ah, state, save)


def cell_step_backward(adapter, cell, ctx, saved, dnew):
    """The backward of one recurrent step: ``adapter.cell_step_backward``, or the cell's own.

    ``cell`` is one of :data:`normcore._reference.cells.CELL_IMPLEMENTATIONS`;
    the arguments and result are those of its ``step_backward``.
    """
    if not using_reference_path():
        result = adapter.cell_step_backward(ctx.xp, cell.name, ctx, saved, dnew)
        if result is not NotImplemented:
            return result
    return cell.step_backward(ctx, saved, dnew)


def custom_gradient(adapter, forward, backward, inputs):
    """``forward(*inputs) -> (y, saved)``, with ``backward(dy, saved)`` as ``y``'s gradient.

    ``adapter.custom_gradient`` where the library differentiates in a way
    that must be told (torch's autograd); otherwise ``forward`` runs as it is
    (no autodiff, or one that differentiates ``forward`` itself, as JAX does).
    """
    result = adapter.custom_gradient(forward, backward, inputs)
    return forward(*inputs) if result is NotImplemented else result


def recurrent(adapter, xp, xs, states0, layer_params, **options):
    """``adapter.recurrent`` (a native kernel for plain cells), or ``NotImplemented``.

    ``NotImplemented`` inside :func:`~normcore.reference_path` or for an
    empty sequence, so that normcore's own loop runs.
    """
    if using_reference_path() or is_empty(xs):
        return NotImplemented
    return adapter.recurrent(xp, xs, states0, layer_params, **options)


def map_batches(adapter, function, args, *, in_axes, out_axes):
    """``adapter.map_batches`` (one task per batch part), or ``NotImplemented``.

    ``NotImplemented`` inside :func:`~normcore.reference_path`: the caller
    then computes on the whole arrays, the reference on any library.
    """
    if using_reference_path():
        return NotImplemented
    return adapter.map_batches(function, args, in_axes, out_axes)


def settle(values: tuple[Array, ...]) -> tuple[Array, ...]:
    """``values`` computed together where their adapter is lazy (``Adapter.settle``)."""
    from .registry import adapter_for

    return adapter_for(values[0]).settle(values)


def adopt(adapter, xp, x, other):
    """``other`` as an array of ``x``'s library: itself, or the adapter's lazy conversion.

    :func:`~normcore._plumbing.validation.check_arrays` has accepted it already.
    """
    if other is None or namespace_of(other) is xp:
        return other
    return adapter.adopt(xp, x, other)


def adopted(adapter, xp, x, gain, bias, layout):
    """``gain``, ``bias`` and ``layout``'s statistics adopted into ``x``'s library."""
    gain, bias = adopt(adapter, xp, x, gain), adopt(adapter, xp, x, bias)
    stats = layout.stats
    if stats is not None:
        mean, var = adopt(adapter, xp, x, stats.mean), adopt(adapter, xp, x, stats.var)
        if mean is not stats.mean or var is not stats.var:
            layout = replace(layout, stats=Statistics(mean, var))
    return gain, bias, layout


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

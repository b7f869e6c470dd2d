"""Weight normalization (Salimans & Kingma, 2016) on the shared normalization primitive.

``w = g * v / ||v||`` with the norm over every axis of ``v`` except the output
axis. This is RMS normalization of ``v`` over those axes with the gain scaled
by ``1/sqrt(n)`` (``n`` values per norm), since ``v / ||v|| = (v / rms(v)) / sqrt(n)``;
so it is one call of the primitive, not a second implementation.
"""

from __future__ import annotations

import math
from typing import Any

from .._plumbing import dispatch
from .._plumbing.compat import device_of
from .._plumbing.dispatch import is_empty
from .._plumbing.registry import adapter_for
from .._plumbing.validation import (
    check_arrays,
    check_eps,
    check_eps_in,
    check_gradient,
    check_gradient_given,
    check_param_shape,
    normalize_axes,
)
from .._reference.primitive import as_dtype
from ..adapter import Gradients, Layout
from ..typing import Array

__all__ = ["weight_norm", "weight_norm_backward"]


def _prepare(v: Any, g: Any, axis: Any, eps: Any, dw: Any = None):
    xp = check_arrays(v, x_name="v", g=g, dw=dw)
    kept = normalize_axes(axis, v.ndim)
    eps = check_eps(eps)
    reduced = tuple(a for a in range(v.ndim) if a not in kept)
    if not reduced:
        raise ValueError(
            f"axis={axis!r} keeps every axis of v (shape {tuple(v.shape)}); weight_norm needs "
            "at least one axis to take the norm over"
        )
    check_param_shape(g, tuple(v.shape[a] for a in kept), "g", f"the shape of v's axes {kept}")
    check_gradient(dw, v, "dw", "v")
    adapter = adapter_for(v)
    n = math.prod(v.shape[a] for a in reduced)  # eps / n is what the primitive adds
    check_eps_in(eps, xp, adapter.accumulation_dtype(xp, v.dtype), added=1.0 / n if n else 1.0)
    return xp, adapter, kept, reduced, eps


def _layout(xp: Any, adapter: Any, v: Any, g: Any, kept: tuple, reduced: tuple, eps: float):
    """Return ``(gain, scale, layout)``: the primitive's gain and layout.

    The primitive's RMS statistic is ``mean(v**2) + eps'``; with ``eps' = eps / n``
    its output times ``1 / sqrt(n)`` is ``v / sqrt(sum(v**2) + eps)``. The scale is
    folded into the gain (in the accumulation dtype, so float16 loses nothing).
    """
    n = math.prod(v.shape[a] for a in reduced)
    scale = 1.0 / math.sqrt(n)
    acc = adapter.accumulation_dtype(xp, v.dtype)
    if g is None:
        shape = tuple(v.shape[a] for a in kept)
        gain = xp.full(shape, scale, dtype=acc, device=device_of(v))
    else:
        gain = as_dtype(xp, g, acc) * scale
    return gain, scale, Layout(reduced, kept, center=False, eps=eps / n)


def _empty_layout(kept: tuple, reduced: tuple, eps: float) -> Layout:
    """The layout of an empty ``v``, whose gain is ``g`` unscaled (there is nothing to scale)."""
    return Layout(reduced, kept, center=False, eps=eps)


def weight_norm(
    v: Array, g: Array | None = None, *, axis: int | tuple[int, ...] = 0, eps: float = 1e-12
) -> Array:
    """Weight normalization: ``w = g * v / ||v||`` (Salimans & Kingma, 2016).

    The Euclidean norm is taken over every axis of ``v`` except ``axis`` (the
    output axis), as ``torch.nn.utils.parametrizations.weight_norm(dim=0)``
    does: for a ``(out, in)`` matrix or an ``(out, in, kh, kw)`` kernel each
    output unit's incoming weight vector gets norm ``g``.

    Parameters
    ----------
    v : array
        The direction parameter: real floating dtype, at least 2 axes in
        practice (any supported library).
    g : array, optional
        The magnitude per output unit, with the shape of ``v``'s ``axis``
        (``(out,)``, not torch's ``(out, 1, 1, 1)``). None means 1: each row of
        ``w`` has unit norm.
    axis : int or tuple of int, default 0
        The axes that are kept (not reduced); the others are normed over.
    eps : float, default 1e-12
        ``w = g * v / sqrt(sum(v**2) + eps)``. The paper and torch use no
        epsilon (an all-zero ``v`` gives NaN there); here it gives ``w = 0``.
        It changes other results by a relative ``eps / (2 * sum(v**2))`` at most.

    Returns
    -------
    w : array
        Same library, device, dtype and shape as ``v``.

    Raises
    ------
    TypeError
        If ``v`` is not a real floating array, or ``g`` comes from another
        library or has an incompatible dtype.
    ValueError
        If ``axis`` is out of range, repeated or keeps every axis, ``g`` has the
        wrong shape or device, or ``eps`` is not a finite number > 0.

    See Also
    --------
    weight_norm_backward : Gradients of this function.
    rms_norm : The primitive this is computed with.

    Notes
    -----
    Computed by the same primitive as :func:`rms_norm`, over the reduced axes
    with ``eps / n`` and a gain of ``g / sqrt(n)``, where ``n`` is the number of
    values in each norm. Differentiable by torch's autograd.

    Examples
    --------
    >>> import numpy as np
    >>> import normcore
    >>> v = np.array([[3.0, 4.0], [0.0, 2.0]])
    >>> normcore.weight_norm(v)
    array([[0.6, 0.8],
           [0. , 1. ]])
    >>> normcore.weight_norm(v, g=np.array([2.0, 3.0]))
    array([[1.2, 1.6],
           [0. , 3. ]])
    """
    xp, adapter, kept, reduced, eps = _prepare(v, g, axis, eps)
    if is_empty(v):
        # The gain scaling below divides by the count, which may be 0; the dispatch
        # answers empty inputs with an output computed from v and g, so that
        # autograd reaches them (zeros_like(v) would cut the graph).
        return dispatch.normalize(adapter, xp, v, g, None, _empty_layout(kept, reduced, eps)).y
    gain, _, layout = _layout(xp, adapter, v, g, kept, reduced, eps)
    return dispatch.normalize(adapter, xp, v, gain, None, layout).y


def weight_norm_backward(
    dw: Array,
    v: Array,
    g: Array | None = None,
    *,
    axis: int | tuple[int, ...] = 0,
    eps: float = 1e-12,
) -> Gradients:
    """Gradients of :func:`weight_norm` with respect to ``v`` and ``g``.

    With ``u = v / ||v||``: ``dv = g / ||v|| * (dw - u * sum(dw * u))`` and
    ``dg = sum(dw * u)``, sums over the normed axes.

    Parameters
    ----------
    dw : array
        Gradient of the loss with respect to ``w``; shape and dtype of ``v``.
    v, g, axis, eps
        The arguments the forward was called with.

    Returns
    -------
    Gradients
        Named tuple ``(dx, dgain, dbias)``: ``dx`` is the gradient with respect
        to ``v``, ``dgain`` with respect to ``g`` (None when ``g`` was None),
        ``dbias`` is always None.

    Raises
    ------
    TypeError, ValueError
        As for :func:`weight_norm`, and when ``dw`` does not match ``v``.

    Examples
    --------
    >>> import numpy as np
    >>> import normcore
    >>> v = np.array([[3.0, 4.0], [0.0, 2.0]])
    >>> grads = normcore.weight_norm_backward(np.array([[1.0, 0.0], [0.0, 0.0]]), v, np.ones(2) * 2)
    >>> np.round(grads.dx, 6)
    array([[ 0.256, -0.192],
           [ 0.   ,  0.   ]])
    >>> np.round(grads.dgain, 6)
    array([0.6, 0. ])
    """
    check_gradient_given(dw, "dw")
    xp, adapter, kept, reduced, eps = _prepare(v, g, axis, eps, dw)
    if is_empty(v):  # zero gradients (sums over no values), answered by the dispatch
        grads = dispatch.normalize_backward(
            adapter, xp, dw, v, g, None, _empty_layout(kept, reduced, eps)
        )
        return Gradients(grads.dx, grads.dgain, None)
    gain, scale, layout = _layout(xp, adapter, v, g, kept, reduced, eps)
    grads = dispatch.normalize_backward(adapter, xp, dw, v, gain, None, layout)
    dg = None if g is None else xp.astype(grads.dgain * scale, g.dtype)
    return Gradients(grads.dx, dg, None)

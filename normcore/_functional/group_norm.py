"""Group and instance normalization: the primitive over groups of channels and space.

* Group norm (Wu & He, 2018): the channel axis is split into
  ``(groups, channels // groups)``; statistics per example and group over the
  channels of the group and the spatial axes; gain/bias span both split axes.
* Instance norm: group norm with one channel per group.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from .._plumbing import dispatch
from .._plumbing.dispatch import is_empty
from .._plumbing.registry import adapter_for
from .._plumbing.validation import (
    check_arrays,
    check_eps,
    check_eps_in,
    check_gradient,
    check_gradient_given,
    check_num_groups,
    check_param_shape,
)
from ..adapter import Adapter, Gradients, Layout
from ..typing import Array, Namespace
from .batch_norm import check_batched

__all__ = [
    "group_norm",
    "group_norm_backward",
    "instance_norm",
    "instance_norm_backward",
    "instance_norm_forward",
]


class _GroupCall(NamedTuple):
    """A validated group-norm call, on ``x`` with its channel axis split in two."""

    adapter: Adapter
    xp: Namespace
    grouped_shape: tuple[int, ...]  # x with its channel axis split into (groups, size)
    param_shape: tuple[int, ...]  # (groups, size)
    layout: Layout
    x: Array

    def grouped(self, a: Array | None) -> Array | None:
        """``a`` (x, dy or a parameter, adopted into x's library) reshaped to the grouped layout."""
        if a is None:
            return None
        a = dispatch.adopt(self.adapter, self.xp, self.x, a)
        shape = self.param_shape if a.ndim == 1 else self.grouped_shape
        return self.xp.reshape(a, shape)


def _prepare(
    x: Array,
    num_groups: int | None,
    gain: Array | None,
    bias: Array | None,
    axis: int,
    eps: float,
    instance: bool,
    dy: Array | None = None,
) -> _GroupCall:
    """Validate a call; ``instance`` norm has one channel per group (``num_groups`` unused)."""
    xp = check_arrays(x, adopt=True, gain=gain, bias=bias, dy=dy)
    axis = check_batched(x, axis)
    if axis == 0:
        raise ValueError("axis must be the channel axis, not the batch axis 0, got axis=0")
    eps = check_eps(eps)
    if dy is not None:
        check_gradient(dy, x)
    channels = x.shape[axis]
    groups = channels if instance else check_num_groups(num_groups, channels)
    what = f"one value per channel along axis {axis}"
    check_param_shape(gain, (channels,), "gain", what)
    check_param_shape(bias, (channels,), "bias", what)
    if instance and not is_empty(x) and math.prod(x.shape) == x.shape[0] * channels:
        raise ValueError(
            "expected more than 1 spatial element per channel for instance_norm, "
            f"got input shape {tuple(x.shape)}"
        )
    size = channels // groups if groups else 0
    grouped = (*x.shape[:axis], groups, size, *x.shape[axis + 1 :])
    reduce_axes = tuple(a for a in range(1, len(grouped)) if a != axis)
    layout = Layout(reduce_axes, (axis, axis + 1), True, eps)
    adapter = adapter_for(x)
    check_eps_in(eps, xp, adapter.accumulation_dtype(xp, x.dtype))
    return _GroupCall(adapter, xp, grouped, (groups, size), layout, x)


def _forward(x, num_groups, gain, bias, axis, eps, instance) -> Array:
    call = _prepare(x, num_groups, gain, bias, axis, eps, instance)
    g = call.grouped
    y = dispatch.normalize(call.adapter, call.xp, g(x), g(gain), g(bias), call.layout).y
    return call.xp.reshape(y, tuple(x.shape))


def _backward(dy, x, num_groups, gain, bias, axis, eps, instance) -> Gradients:
    check_gradient_given(dy)
    call = _prepare(x, num_groups, gain, bias, axis, eps, instance, dy=dy)
    g, xp = call.grouped, call.xp
    grads = dispatch.normalize_backward(
        call.adapter, xp, g(dy), g(x), g(gain), g(bias), call.layout
    )
    channels = (math.prod(call.param_shape),)
    return Gradients(
        xp.reshape(grads.dx, tuple(x.shape)),
        None if grads.dgain is None else xp.reshape(grads.dgain, channels),
        None if grads.dbias is None else xp.reshape(grads.dbias, channels),
    )


def instance_norm_forward(
    x: Array, gain: Array | None, bias: Array | None, *, axis: int, eps: float
) -> tuple[Array, Array | None, Array | None]:
    """:func:`instance_norm` and the statistics it used: ``(y, mean, var)``.

    ``mean`` and the biased ``var`` have one value per example and channel, in
    the shape of ``x`` with its spatial axes reduced to size 1 (None for an
    empty ``x``). One pass serves the normalization and a running-statistics
    update (``normcore.torch.InstanceNorm*d`` with ``track_running_stats``).
    """
    call = _prepare(x, None, gain, bias, axis, eps, instance=True)
    g, xp = call.grouped, call.xp
    y, mean, var = dispatch.normalize(
        call.adapter, xp, g(x), g(gain), g(bias), call.layout, need_stats=True
    )
    if mean is None:  # an empty x has no statistics
        return xp.reshape(y, tuple(x.shape)), None, None
    axis = axis % x.ndim
    reduced = tuple(1 if a not in (0, axis) else n for a, n in enumerate(x.shape))
    return xp.reshape(y, tuple(x.shape)), xp.reshape(mean, reduced), xp.reshape(var, reduced)


def group_norm(
    x: Array,
    num_groups: int,
    gain: Array | None = None,
    bias: Array | None = None,
    *,
    axis: int = 1,
    eps: float = 1e-5,
) -> Array:
    """Group normalization: normalize each example over groups of channels and space.

    The channels along ``axis`` are split into ``num_groups`` consecutive
    groups; each example's group is normalized with its own mean and biased
    variance over the group's channels and every spatial axis, then scaled
    and shifted per channel (PyTorch's ``torch.nn.functional.group_norm``).
    The same computation in training and inference; the batch axis is 0.

    Parameters
    ----------
    x : array
        Input ``N x C x ...`` (or channels-last with ``axis=-1``), real floating
        dtype, at least 2-D.
    num_groups : int
        Number of groups; must divide the number of channels.
    gain, bias : array, optional
        One value per channel, shape ``(x.shape[axis],)``; None means 1 and 0.
    axis : int, default 1
        The channel axis; any axis but the batch axis 0.
    eps : float, default 1e-5
        Added to the variance inside the square root; a finite number > 0.

    Returns
    -------
    y : array
        Same library, device, dtype and shape as ``x``.

    Raises
    ------
    TypeError
        As for :func:`batch_norm`, or if ``num_groups`` is not an int.
    ValueError
        If ``num_groups`` does not divide the channels, ``axis`` is 0 or out
        of range, or a parameter has the wrong shape.

    See Also
    --------
    group_norm_backward, instance_norm, layer_norm

    Examples
    --------
    >>> import numpy as np
    >>> import normcore
    >>> x = np.arange(8.0).reshape(1, 4, 2)
    >>> np.round(normcore.group_norm(x, 2), 4)
    array([[[-1.3416, -0.4472],
            [ 0.4472,  1.3416],
            [-1.3416, -0.4472],
            [ 0.4472,  1.3416]]])
    """
    return _forward(x, num_groups, gain, bias, axis, eps, instance=False)


def group_norm_backward(
    dy: Array,
    x: Array,
    num_groups: int,
    gain: Array | None = None,
    bias: Array | None = None,
    *,
    axis: int = 1,
    eps: float = 1e-5,
) -> Gradients:
    """Gradients of :func:`group_norm` with respect to ``x``, ``gain`` and ``bias``.

    Parameters
    ----------
    dy : array
        Gradient of the loss with respect to the output; shape and dtype of ``x``.
    x, num_groups, gain, bias, axis, eps
        The arguments the forward was called with.

    Returns
    -------
    Gradients
        Named tuple ``(dx, dgain, dbias)``; ``dgain``/``dbias`` are None where
        ``gain``/``bias`` were None.

    Examples
    --------
    >>> import numpy as np
    >>> import normcore
    >>> x = np.arange(8.0).reshape(1, 4, 2)
    >>> grads = normcore.group_norm_backward(np.ones_like(x), x, 2, gain=np.ones(4))
    >>> np.round(grads.dgain, 4)
    array([-1.7888,  1.7888, -1.7888,  1.7888])
    """
    return _backward(dy, x, num_groups, gain, bias, axis, eps, instance=False)


def instance_norm(
    x: Array,
    gain: Array | None = None,
    bias: Array | None = None,
    *,
    axis: int = 1,
    eps: float = 1e-5,
) -> Array:
    """Instance normalization: normalize each example's channel over its spatial axes.

    Group normalization with one channel per group (PyTorch's
    ``torch.nn.functional.instance_norm`` without running statistics).

    Parameters
    ----------
    x : array
        Input ``N x C x ...`` with at least one spatial axis of more than one
        element (or channels-last with ``axis=-1``), real floating dtype.
    gain, bias : array, optional
        One value per channel; None means 1 and 0.
    axis : int, default 1
        The channel axis; any axis but the batch axis 0.
    eps : float, default 1e-5
        Added to the variance inside the square root; a finite number > 0.

    Returns
    -------
    y : array
        Same library, device, dtype and shape as ``x``.

    Raises
    ------
    TypeError, ValueError
        As for :func:`group_norm`, and if each channel has a single value.

    See Also
    --------
    instance_norm_backward, group_norm

    Examples
    --------
    >>> import numpy as np
    >>> import normcore
    >>> x = np.array([[[1.0, 3.0], [10.0, 30.0]]])
    >>> normcore.instance_norm(x, eps=1e-12)
    array([[[-1.,  1.],
            [-1.,  1.]]])
    """
    return _forward(x, None, gain, bias, axis, eps, instance=True)


def instance_norm_backward(
    dy: Array,
    x: Array,
    gain: Array | None = None,
    bias: Array | None = None,
    *,
    axis: int = 1,
    eps: float = 1e-5,
) -> Gradients:
    """Gradients of :func:`instance_norm` with respect to ``x``, ``gain`` and ``bias``.

    Parameters
    ----------
    dy : array
        Gradient of the loss with respect to the output; shape and dtype of ``x``.
    x, gain, bias, axis, eps
        The arguments the forward was called with.

    Returns
    -------
    Gradients
        Named tuple ``(dx, dgain, dbias)``.

    Examples
    --------
    >>> import numpy as np
    >>> import normcore
    >>> x = np.array([[[1.0, 3.0], [10.0, 30.0]]])
    >>> grads = normcore.instance_norm_backward(np.ones_like(x), x, bias=np.zeros(2))
    >>> grads.dbias
    array([2., 2.])
    """
    return _backward(dy, x, None, gain, bias, axis, eps, instance=True)

"""Batch, group and instance normalization: the primitive over the batch's axes.

* Batch norm (Ioffe & Szegedy, 2015): statistics per feature/channel over
  every other axis; ``param_axes = (axis,)``.
* Group norm (Wu & He, 2018): the channel axis is split into
  ``(groups, channels // groups)``; statistics per example and group over the
  channels of the group and the spatial axes; gain/bias span both split axes.
* Instance norm: group norm with one channel per group.

Every function validates its arguments, then makes one call into
``normcore._dispatch``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from . import _dispatch
from ._dispatch import is_empty
from ._primitive import Gradients, Normalized, Statistics, broadcast_param
from ._registry import adapter_for
from ._validation import (
    check_arrays,
    check_correction,
    check_eps,
    check_gradient,
    check_gradient_given,
    check_num_groups,
    check_param_shape,
    normalize_axis,
)

__all__ = [
    "batch_norm",
    "batch_norm_backward",
    "group_norm",
    "group_norm_backward",
    "instance_norm",
    "instance_norm_backward",
]


def _check_batched(x: Any, axis: Any) -> int:
    if x.ndim < 2:
        raise ValueError(
            "x must have at least 2 dimensions (a batch axis and the feature axis), "
            f"got shape {tuple(x.shape)}"
        )
    return normalize_axis(axis, x.ndim)


# -- batch normalization ---------------------------------------------------------


class _BatchLayout(NamedTuple):
    xp: Any
    adapter: Any
    axis: int
    eps: float
    stats: Statistics | None
    correction: float


def prepare_batch_norm(x, gain, bias, axis, eps, mean, var, dy=None, correction=0) -> _BatchLayout:
    """Validate batch norm's arguments; return the layout for the primitive.

    Also used by :class:`normcore.BatchNorm`, which passes its running
    statistics as ``mean``/``var``.
    """
    xp = check_arrays(x, gain=gain, bias=bias, mean=mean, var=var, dy=dy)
    axis = _check_batched(x, axis)
    eps = check_eps(eps)
    if dy is not None:
        check_gradient(dy, x)
    if (mean is None) != (var is None):
        given = "mean" if var is None else "var"
        raise ValueError(
            "mean and var must be given together (inference) or both be None "
            f"(training with batch statistics), got only {given}"
        )
    features = (x.shape[axis],)
    what = f"one value per feature along axis {axis}"
    for name, param in (("gain", gain), ("bias", bias), ("mean", mean), ("var", var)):
        check_param_shape(param, features, name, what)
    if mean is None:
        check_trainable_batch(x, axis)
        values = None if is_empty(x) else math.prod(x.shape) // x.shape[axis]
        correction = check_correction(correction, values)
    elif check_correction(correction, None):
        raise ValueError(
            "correction applies to batch statistics only; with mean and var given it must "
            f"be 0, got {correction!r}"
        )
    stats = None
    if mean is not None:
        stats = Statistics(
            broadcast_param(xp, mean, (axis,), x.ndim), broadcast_param(xp, var, (axis,), x.ndim)
        )
    return _BatchLayout(xp, adapter_for(x), axis, eps, stats, float(correction))


def check_trainable_batch(x: Any, axis: int) -> None:
    """Refuse batch statistics from one value per feature (``m / (m - 1)`` is undefined)."""
    if not is_empty(x) and math.prod(x.shape) == x.shape[axis]:
        raise ValueError(
            "expected more than 1 value per channel when training, "
            f"got input shape {tuple(x.shape)}; to normalize it, use running or given "
            "statistics (BatchNorm: training=False or .eval(); batch_norm: mean= and var=)"
        )


def normalize_batch(
    x: Any, gain: Any, bias: Any, layout: _BatchLayout, *, need_stats: bool = False
) -> Normalized:
    """Batch norm of validated, non-empty arguments (``layout`` from :func:`prepare_batch_norm`).

    Returns ``y`` with the per-channel statistics it used (``need_stats=True``
    makes fast paths return them as well).
    """
    return _dispatch.normalize(
        layout.xp,
        layout.adapter,
        x,
        gain,
        bias,
        reduce_axes=tuple(a for a in range(x.ndim) if a != layout.axis),
        param_axes=(layout.axis,),
        center=True,
        eps=layout.eps,
        stats=layout.stats,
        need_stats=need_stats,
        correction=layout.correction,
    )


def batch_norm(x, gain=None, bias=None, *, axis=1, eps=1e-5, mean=None, var=None, correction=0):
    """Batch normalization: normalize each feature with statistics over the batch.

    Computes ``y = (x - mean) / sqrt(var + eps) * gain + bias`` per index of
    ``axis`` (Ioffe & Szegedy, 2015, Algorithm 1). Without ``mean``/``var``
    the statistics are this batch's mean and biased variance over every other
    axis (training); with them, those are used (inference).

    Parameters
    ----------
    x : array
        Input of any supported library, real floating dtype, at least 2-D.
    gain, bias : array, optional
        One value per feature, shape ``(x.shape[axis],)``; None means 1 and 0.
    axis : int, default 1
        The feature (channel) axis: 1 for ``N x D`` and ``N x C x H x W``,
        -1 for channels-last ``N x H x W x C``.
    eps : float, default 1e-5
        Added to the variance inside the square root; a finite number > 0.
    mean, var : array, optional
        Fixed statistics, shape ``(x.shape[axis],)``, for inference (for
        example the running statistics of a :class:`BatchNorm`, or the result
        of :func:`population_stats`). Give both or neither.
    correction : float, default 0
        Degrees-of-freedom correction of the batch variance: it divides the
        sum of squared deviations by ``m - correction`` for ``m`` values per
        feature. 0 is Ioffe & Szegedy's biased variance; 1 the unbiased one
        that Ba et al. (2016) use for batch norm at batch size 4. Must be 0
        when ``mean``/``var`` are given.

    Returns
    -------
    y : array
        Same library, device, dtype and shape as ``x``.

    Raises
    ------
    TypeError
        If an argument is not an array of ``x``'s library or has a wrong dtype.
    ValueError
        If ``x`` has fewer than 2 dimensions, ``axis`` is out of range, a
        parameter or statistic has the wrong shape or device, only one of
        ``mean``/``var`` is given, ``eps`` is not > 0, batch statistics are
        requested from a single value per feature, or ``correction`` is
        negative, not less than ``m``, or nonzero with ``mean``/``var`` given.

    See Also
    --------
    batch_norm_backward, BatchNorm, population_stats

    Notes
    -----
    Statistics are computed in two passes over shifted data; a constant
    feature normalizes to exactly ``bias``. PyTorch tensors are differentiable
    through this function with autograd.

    Examples
    --------
    >>> import numpy as np
    >>> import normcore
    >>> x = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 60.0]])
    >>> np.round(normcore.batch_norm(x), 4)
    array([[-1.2247, -0.9258],
           [ 0.    , -0.4629],
           [ 1.2247,  1.3887]])

    With the unbiased batch variance (here ``m = 3``, so ``xhat`` shrinks by ``sqrt(2/3)``):

    >>> np.round(normcore.batch_norm(x, correction=1), 4)
    array([[-1.    , -0.7559],
           [ 0.    , -0.378 ],
           [ 1.    ,  1.1339]])

    With fixed (running or population) statistics:

    >>> np.round(normcore.batch_norm(x, mean=np.array([2.0, 30.0]), var=np.array([1.0, 400.0])), 4)
    array([[-1. , -1. ],
           [ 0. , -0.5],
           [ 1. ,  1.5]])
    """
    layout = prepare_batch_norm(x, gain, bias, axis, eps, mean, var, correction=correction)
    return normalize_batch(x, gain, bias, layout).y


def batch_norm_backward(
    dy, x, gain=None, bias=None, *, axis=1, eps=1e-5, mean=None, var=None, correction=0
):
    """Gradients of :func:`batch_norm` with respect to ``x``, ``gain`` and ``bias``.

    With batch statistics (``mean``/``var`` None) the gradient flows through
    them (``m`` is the mean over every axis but ``axis``)::

        dx = rstd * (dxhat - m(dxhat) - xhat * m(dxhat * xhat)),  dxhat = dy * gain

    (with ``correction`` ``k`` the last mean is scaled by ``n / (n - k)``, ``n``
    values per feature). With given statistics they are constants:
    ``dx = rstd * dxhat``.

    Parameters
    ----------
    dy : array
        Gradient of the loss with respect to the output; shape and dtype of ``x``.
    x, gain, bias, axis, eps, mean, var, correction
        The arguments the forward was called with.

    Returns
    -------
    Gradients
        Named tuple ``(dx, dgain, dbias)``; ``dgain``/``dbias`` are None where
        ``gain``/``bias`` were None.

    Raises
    ------
    TypeError, ValueError
        As for :func:`batch_norm`, and when ``dy`` does not match ``x``.

    Examples
    --------
    >>> import numpy as np
    >>> import normcore
    >>> x = np.array([[1.0], [2.0], [4.0]])
    >>> grads = normcore.batch_norm_backward(np.array([[1.0], [0.0], [0.0]]), x,
    ...                                      gain=np.ones(1), bias=np.zeros(1))
    >>> np.round(grads.dx, 4)
    array([[ 0.2291],
           [-0.3436],
           [ 0.1145]])
    >>> grads.dbias
    array([1.])
    """
    check_gradient_given(dy)
    layout = prepare_batch_norm(x, gain, bias, axis, eps, mean, var, dy=dy, correction=correction)
    return _dispatch.normalize_backward(
        layout.xp,
        layout.adapter,
        dy,
        x,
        gain,
        reduce_axes=tuple(a for a in range(x.ndim) if a != layout.axis),
        param_axes=(layout.axis,),
        center=True,
        eps=layout.eps,
        stats=layout.stats,
        correction=layout.correction,
        need_dgain=gain is not None,
        need_dbias=bias is not None,
        bias_dtype=None if bias is None else bias.dtype,
    )


# -- group and instance normalization ------------------------------------------------


class _GroupLayout(NamedTuple):
    xp: Any
    adapter: Any
    eps: float
    grouped_shape: tuple[int, ...]  # x with its channel axis split into (groups, size)
    param_shape: tuple[int, ...]  # (groups, size)
    reduce_axes: tuple[int, ...]
    param_axes: tuple[int, ...]


def _prepare_group(x, num_groups, gain, bias, axis, eps, dy=None, instance=False) -> _GroupLayout:
    xp = check_arrays(x, gain=gain, bias=bias, dy=dy)
    axis = _check_batched(x, axis)
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
    return _GroupLayout(
        xp, adapter_for(x), eps, grouped, (groups, size), reduce_axes, (axis, axis + 1)
    )


def _grouped_params(xp: Any, layout: _GroupLayout, *params: Any) -> list[Any]:
    return [None if p is None else xp.reshape(p, layout.param_shape) for p in params]


def _group_forward(x, num_groups, gain, bias, axis, eps, instance):
    layout = _prepare_group(x, num_groups, gain, bias, axis, eps, instance=instance)
    xp = layout.xp
    gain, bias = _grouped_params(xp, layout, gain, bias)
    y = _dispatch.normalize(
        xp,
        layout.adapter,
        xp.reshape(x, layout.grouped_shape),
        gain,
        bias,
        reduce_axes=layout.reduce_axes,
        param_axes=layout.param_axes,
        center=True,
        eps=layout.eps,
    ).y
    return xp.reshape(y, tuple(x.shape))


def _group_backward(dy, x, num_groups, gain, bias, axis, eps, instance):
    check_gradient_given(dy)
    layout = _prepare_group(x, num_groups, gain, bias, axis, eps, dy=dy, instance=instance)
    xp = layout.xp
    (grouped_gain,) = _grouped_params(xp, layout, gain)
    grads = _dispatch.normalize_backward(
        xp,
        layout.adapter,
        xp.reshape(dy, layout.grouped_shape),
        xp.reshape(x, layout.grouped_shape),
        grouped_gain,
        reduce_axes=layout.reduce_axes,
        param_axes=layout.param_axes,
        center=True,
        eps=layout.eps,
        need_dgain=gain is not None,
        need_dbias=bias is not None,
        bias_dtype=None if bias is None else bias.dtype,
    )
    channels = (layout.param_shape[0] * layout.param_shape[1],)
    return Gradients(
        xp.reshape(grads.dx, tuple(x.shape)),
        None if grads.dgain is None else xp.reshape(grads.dgain, channels),
        None if grads.dbias is None else xp.reshape(grads.dbias, channels),
    )


def group_norm(x, num_groups, gain=None, bias=None, *, axis=1, eps=1e-5):
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
    return _group_forward(x, num_groups, gain, bias, axis, eps, instance=False)


def group_norm_backward(dy, x, num_groups, gain=None, bias=None, *, axis=1, eps=1e-5):
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
    return _group_backward(dy, x, num_groups, gain, bias, axis, eps, instance=False)


def instance_norm(x, gain=None, bias=None, *, axis=1, eps=1e-5):
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
    return _group_forward(x, None, gain, bias, axis, eps, instance=True)


def instance_norm_backward(dy, x, gain=None, bias=None, *, axis=1, eps=1e-5):
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
    return _group_backward(dy, x, None, gain, bias, axis, eps, instance=True)

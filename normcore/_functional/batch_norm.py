"""Batch normalization (Ioffe & Szegedy, 2015): the primitive over the batch's axes.

Statistics per feature/channel over every other axis; ``param_axes = (axis,)``.
:func:`batch_norm` and :func:`batch_norm_backward` are the functional API;
:func:`batch_norm_forward` is one training or inference step of a batch norm
layer with running statistics (normalization and running update from one
pass), shared by :class:`normcore.BatchNorm` and ``normcore.torch.BatchNorm*d``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from .._plumbing import dispatch
from .._plumbing.dispatch import is_empty
from .._plumbing.registry import adapter_for
from .._plumbing.validation import (
    check_arrays,
    check_correction,
    check_eps,
    check_gradient,
    check_gradient_given,
    check_known_sizes,
    check_param_shape,
    normalize_axis,
)
from .._reference.primitive import broadcast_param
from .._reference.running import RunningStats, running_update
from ..adapter import Adapter, Gradients, Layout, Statistics
from ..typing import Array, Namespace

__all__ = [
    "BatchCall",
    "batch_norm",
    "batch_norm_backward",
    "batch_norm_forward",
    "check_batched",
    "check_trainable_batch",
    "prepare_batch_norm",
]


def check_batched(x: Array, axis: int) -> int:
    """Return the feature ``axis`` of ``x`` (non-negative) after checking ``x`` is batched."""
    if x.ndim < 2:
        raise ValueError(
            "x must have at least 2 dimensions (a batch axis and the feature axis), "
            f"got shape {tuple(x.shape)}"
        )
    return normalize_axis(axis, x.ndim)


class BatchCall(NamedTuple):
    """A validated batch-norm call: what the primitive needs."""

    adapter: Adapter
    xp: Namespace
    axis: int
    layout: Layout


def prepare_batch_norm(
    x: Array,
    gain: Array | None,
    bias: Array | None,
    axis: int,
    eps: float,
    mean: Array | None,
    var: Array | None,
    dy: Array | None = None,
    correction: float = 0,
) -> BatchCall:
    """Validate batch norm's arguments; return the call for the primitive.

    Also used by :func:`batch_norm_forward`, which passes running statistics
    as ``mean``/``var``.
    """
    xp = check_arrays(x, adopt=True, gain=gain, bias=bias, mean=mean, var=var, dy=dy)
    axis = check_batched(x, axis)
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
        check_known_sizes(x, tuple(a for a in range(x.ndim) if a != axis))
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
        adapter = adapter_for(x)
        mean, var = dispatch.adopt(adapter, xp, x, mean), dispatch.adopt(adapter, xp, x, var)
        stats = Statistics(
            broadcast_param(xp, mean, (axis,), x.ndim), broadcast_param(xp, var, (axis,), x.ndim)
        )
    reduce_axes = tuple(a for a in range(x.ndim) if a != axis)
    layout = Layout(reduce_axes, (axis,), True, eps, stats, float(correction))
    return BatchCall(adapter_for(x), xp, axis, layout)


def check_trainable_batch(x: Array, axis: int) -> None:
    """Refuse batch statistics from one value per feature (``m / (m - 1)`` is undefined)."""
    if not is_empty(x) and math.prod(x.shape) == x.shape[axis]:
        raise ValueError(
            "expected more than 1 value per channel when training, "
            f"got input shape {tuple(x.shape)}; to normalize it, use running or given "
            "statistics (BatchNorm: training=False or .eval(); batch_norm: mean= and var=)"
        )


def batch_norm(
    x: Array,
    gain: Array | None = None,
    bias: Array | None = None,
    *,
    axis: int = 1,
    eps: float = 1e-5,
    mean: Array | None = None,
    var: Array | None = None,
    correction: float = 0,
) -> Array:
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
    call = prepare_batch_norm(x, gain, bias, axis, eps, mean, var, correction=correction)
    return dispatch.normalize(call.adapter, call.xp, x, gain, bias, call.layout).y


def batch_norm_backward(
    dy: Array,
    x: Array,
    gain: Array | None = None,
    bias: Array | None = None,
    *,
    axis: int = 1,
    eps: float = 1e-5,
    mean: Array | None = None,
    var: Array | None = None,
    correction: float = 0,
) -> Gradients:
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
    call = prepare_batch_norm(x, gain, bias, axis, eps, mean, var, dy=dy, correction=correction)
    return dispatch.normalize_backward(call.adapter, call.xp, dy, x, gain, bias, call.layout)


def batch_norm_forward(
    x: Array,
    gain: Array | None,
    bias: Array | None,
    running: RunningStats | None,
    *,
    axis: int,
    eps: float,
    momentum: float | None,
    convention: str,
    training: bool,
    correction: float = 0,
    synchronous: bool = True,
) -> tuple[Array, RunningStats | None, tuple[Array | None, Array | None, float]]:
    """One forward of a batch norm layer: ``(y, new running stats or None, statistics used)``.

    Batch statistics in training or without running statistics (``running``
    None), the running ones otherwise. The batch moments are computed once
    and serve both the normalization and the running update; the new running
    statistics are returned, never assigned, so the caller applies them only
    after everything succeeded. The statistics used are ``(mean, var,
    correction)`` as :func:`batch_norm_backward` expects them: ``(None, None,
    correction)`` for batch statistics (normalized with the variance divided
    by ``count - correction``), the running ones otherwise. ``synchronous``
    is passed on to :func:`~normcore._reference.running.running_update`.
    """
    use_batch = training or running is None
    correction = correction if use_batch else 0
    fixed = (None, None) if use_batch else (running.mean, running.var)
    call = prepare_batch_norm(x, gain, bias, axis, eps, *fixed, correction=correction)
    # An empty batch has no statistics: it leaves the running ones as they are.
    tracking = use_batch and training and running is not None and not is_empty(x)
    # One pass normalizes the batch and yields the statistics it used, which
    # then feed the running update (returned, never assigned here).
    y, mean, var = dispatch.normalize(
        call.adapter, call.xp, x, gain, bias, call.layout, need_stats=tracking
    )
    update = None
    if tracking:
        count = call.layout.count(tuple(x.shape))
        # the running update takes the biased variance; the normalization used
        # the one divided by count - correction
        biased = var * ((count - correction) / count) if correction else var
        update = running_update(
            running, count, mean, biased, momentum, convention, synchronous=synchronous
        )
    return y, update, (*fixed, correction)

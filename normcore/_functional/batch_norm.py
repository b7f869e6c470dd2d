"""Batch normalization (Ioffe & Szegedy, 2015): the primitive over the batch's axes.

Statistics per feature/channel over every other axis; ``param_axes = (axis,)``.
:func:`batch_norm` and :func:`batch_norm_backward` are the functional API;
:func:`batch_norm_forward` is one training or inference step of a batch norm
layer with running statistics (normalization and running update from one
pass), shared by :class:`normcore.BatchNorm` and ``normcore.torch.BatchNorm*d``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from .._plumbing import dispatch
from .._plumbing.compat import library_label
from .._plumbing.dispatch import is_empty
from .._plumbing.registry import adapter_for
from .._plumbing.validation import (
    check_arrays,
    check_choice,
    check_correction,
    check_eps,
    check_eps_in,
    check_gradient,
    check_gradient_given,
    check_known_sizes,
    check_param_shape,
    check_real,
    normalize_axis,
)
from .._reference.primitive import broadcast_param
from .._reference.running import CONVENTIONS, RunningStats, running_update
from ..adapter import Adapter, Gradients, Layout, Statistics
from ..sync import Reducer
from ..typing import Array, Namespace
from .sync import (
    SyncedStatistics,
    check_reducer,
    global_statistics,
    synced_backward,
    synced_batch_norm,
)

__all__ = [
    "BatchCall",
    "BatchMoments",
    "batch_norm",
    "batch_norm_backward",
    "batch_norm_forward",
    "batch_norm_pass",
    "batch_norm_train",
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
    sync: Any = None,
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
    check_reducer(sync)
    if sync is not None and mean is not None:
        raise ValueError(
            "sync combines batch statistics over processes; with mean and var given there "
            "are none to combine: pass sync=None (inference needs no communication)"
        )
    features = (x.shape[axis],)
    what = f"one value per feature along axis {axis}"
    for name, param in (("gain", gain), ("bias", bias), ("mean", mean), ("var", var)):
        check_param_shape(param, features, name, what)
    if mean is None:
        check_known_sizes(x, tuple(a for a in range(x.ndim) if a != axis))
        values = None
        if sync is None:  # with sync, this part's size says nothing of the global batch's
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
    adapter = adapter_for(x)
    check_eps_in(eps, xp, adapter.accumulation_dtype(xp, x.dtype))
    return BatchCall(adapter, xp, axis, layout)


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
    sync: Reducer | None = None,
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
    sync : normcore.sync.Reducer, optional
        For data-parallel training: ``x`` is this process's part of a batch
        spread over the processes ``sync`` connects, and the statistics are
        the whole batch's (exact for parts of any sizes, empty ones
        included). Every process must make the same call. With torch,
        autograd's gradient is the whole batch's too. See :mod:`normcore.sync`.

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
    call = prepare_batch_norm(x, gain, bias, axis, eps, mean, var, correction=correction, sync=sync)
    if sync is not None:
        return synced_batch_norm(call, x, gain, bias, sync, correction)[0]
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
    sync: Reducer | None = None,
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
    x, gain, bias, axis, eps, mean, var, correction, sync
        The arguments the forward was called with. With ``sync`` the
        gradient is that of the whole batch's loss (``dgain``/``dbias`` are
        this process's parts of it); this recomputes the global statistics,
        so it communicates twice (a :class:`BatchNorm` with ``sync`` saves
        them and communicates once per backward).

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
    call = prepare_batch_norm(
        x, gain, bias, axis, eps, mean, var, dy=dy, correction=correction, sync=sync
    )
    if sync is not None:
        stats = global_statistics(call, x, sync, correction)
        return synced_backward(call, dy, x, gain, bias, stats, sync)
    return dispatch.normalize_backward(call.adapter, call.xp, dy, x, gain, bias, call.layout)


class BatchMoments(NamedTuple):
    """A training batch's statistics for the running update: values per feature, mean, var."""

    count: int | Array  # an array for the global batch of a synchronized batch norm
    mean: Array
    var: Array  # biased


def batch_norm_pass(
    x: Array,
    gain: Array | None,
    bias: Array | None,
    running: RunningStats | None,
    *,
    axis: int,
    eps: float,
    training: bool,
    correction: float = 0,
    sync: Reducer | None = None,
) -> tuple[Array, BatchMoments | None, Used]:
    """The normalization of :func:`batch_norm_forward`: ``(y, batch moments or None, used)``.

    The batch moments are returned when ``running`` would be updated (a
    non-empty training batch with running statistics), for
    :func:`~normcore._reference.running.running_update`; nothing is updated
    here, so a caller can apply them to whatever the running statistics are
    by then (:class:`normcore.BatchNorm` does, for concurrent calls). With
    ``sync``, batch statistics are the global batch's, and so are the
    moments (also for an empty part of it); ``used`` is then the
    :class:`~normcore._functional.sync.SyncedStatistics` its backward takes.
    """
    use_batch = training or running is None
    correction = correction if use_batch else 0
    sync = sync if use_batch else None  # running statistics: nothing to communicate
    fixed = (None, None) if use_batch else (running.mean, running.var)
    call = prepare_batch_norm(x, gain, bias, axis, eps, *fixed, correction=correction, sync=sync)
    if sync is not None:
        y, synced = synced_batch_norm(call, x, gain, bias, sync, correction)
        moments = None
        if training and running is not None:
            count = synced.count
            biased = synced.var * ((count - correction) / count) if correction else synced.var
            moments = BatchMoments(count, synced.mean, biased)
        return y, moments, synced
    # An empty batch has no statistics: it leaves the running ones as they are.
    tracking = use_batch and training and running is not None and not is_empty(x)
    # One pass normalizes the batch and yields the statistics it used.
    y, mean, var = dispatch.normalize(
        call.adapter, call.xp, x, gain, bias, call.layout, need_stats=tracking
    )
    moments = None
    if tracking:
        count = call.layout.count(tuple(x.shape))
        # the running update takes the biased variance; the normalization used
        # the one divided by count - correction
        biased = var * ((count - correction) / count) if correction else var
        moments = BatchMoments(count, mean, biased)
    return y, moments, (*fixed, correction)


#: The statistics a forward used, for its backward: ``(mean, var, correction)`` as
#: :func:`batch_norm_backward` takes them, or a synchronized forward's global statistics.
Used = tuple[Array | None, Array | None, float] | SyncedStatistics


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
    sync: Reducer | None = None,
) -> tuple[Array, RunningStats | None, Used]:
    """One forward of a batch norm layer: ``(y, new running stats or None, statistics used)``.

    Batch statistics in training or without running statistics (``running``
    None), the running ones otherwise. The batch moments are computed once
    and serve both the normalization and the running update; the new running
    statistics are returned, never assigned, so the caller applies them only
    after everything succeeded. The statistics used are ``(mean, var,
    correction)`` as :func:`batch_norm_backward` expects them: ``(None, None,
    correction)`` for batch statistics (normalized with the variance divided
    by ``count - correction``), the running ones otherwise. ``synchronous``
    is passed on to :func:`~normcore._reference.running.running_update`;
    ``sync`` to :func:`batch_norm_pass`.
    """
    y, moments, used = batch_norm_pass(
        x,
        gain,
        bias,
        running,
        axis=axis,
        eps=eps,
        training=training,
        correction=correction,
        sync=sync,
    )
    update = None
    if moments is not None:
        update = running_update(running, *moments, momentum, convention, synchronous=synchronous)
    return y, update, used


def batch_norm_train(
    x: Array,
    running: RunningStats,
    gain: Array | None = None,
    bias: Array | None = None,
    *,
    axis: int = 1,
    eps: float = 1e-5,
    momentum: float | None = 0.1,
    convention: str = "torch",
    correction: float = 0,
    sync: Reducer | None = None,
) -> tuple[Array, RunningStats]:
    """One training step of batch norm as a pure function: ``(y, new running statistics)``.

    Normalizes ``x`` with its batch statistics (as :func:`batch_norm`) and
    returns the running statistics updated from them, without assigning
    anything: the functional form of ``BatchNorm(...)(x)`` for code that
    cannot mutate state, such as a function under ``jax.jit``. A batch with
    non-finite statistics leaves the running statistics (and the count) as
    they were, selected on the device: no value is read on the host, so the
    whole step can be traced.

    Parameters
    ----------
    x : array
        A batch of any supported library, real floating dtype, at least 2-D,
        more than one value per feature.
    running : RunningStats
        ``(mean, var, num_batches_tracked)``: shape ``(x.shape[axis],)``
        arrays of ``x``'s library, device and dtype (float32 for float16 or
        bfloat16 ``x``) and a 0-d integer count. A named tuple: a pytree for
        JAX.
    gain, bias : array, optional
        One value per feature; None means 1 and 0.
    axis, eps, correction
        As for :func:`batch_norm`.
    momentum : float or None, default 0.1
        In ``[0, 1]``; None is the cumulative average of every batch.
    convention : {"torch", "keras"}, default "torch"
        PyTorch: ``new = (1 - momentum) * old + momentum * batch`` with the
        unbiased batch variance; Keras and Flax: ``new = momentum * old +
        (1 - momentum) * batch`` with the biased one (pass Flax's momentum,
        e.g. 0.99).
    sync : normcore.sync.Reducer, optional
        As for :func:`batch_norm`; the running statistics are then updated
        from the global batch's, identically on every process (for example
        ``normcore.sync.JaxAxis(name)`` inside ``jax.vmap``/``shard_map``).

    Returns
    -------
    y : array
        Same library, device, dtype and shape as ``x``.
    running : RunningStats
        New arrays; the ones passed in are unchanged.

    Raises
    ------
    TypeError
        As :func:`batch_norm`, also for ``running`` that is not three arrays
        of ``x``'s library or a count that is not an integer.
    ValueError
        As :func:`batch_norm`, also for running statistics of the wrong shape
        or device and a ``momentum`` outside ``[0, 1]``.

    Examples
    --------
    >>> import numpy as np
    >>> import normcore
    >>> x = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 60.0]])
    >>> running = normcore.RunningStats(np.zeros(2), np.ones(2), np.asarray(0))
    >>> y, running = normcore.batch_norm_train(x, running)

    With momentum 0.1: ``0.1 * [2, 30]`` and ``0.9 + 0.1 * [1, 700]`` (the
    unbiased batch variances):

    >>> running.mean, running.var, int(running.num_batches_tracked)
    (array([0.2, 3. ]), array([ 1. , 70.9]), 1)
    """
    if not isinstance(running, tuple) or len(running) != 3:
        raise TypeError(
            "running must be a RunningStats (mean, var, num_batches_tracked), got "
            f"{library_label(running)}"
        )
    running = RunningStats(*running)
    check_arrays(
        x,
        **{"running.mean": running.mean, "running.var": running.var},
    )
    check_arrays(
        x, others_kind="integral", **{"running.num_batches_tracked": running.num_batches_tracked}
    )
    axis = check_batched(x, axis)
    features = (x.shape[axis],)
    for name, value in (("running.mean", running.mean), ("running.var", running.var)):
        check_param_shape(value, features, name, f"one value per feature along axis {axis}")
    check_param_shape(running.num_batches_tracked, (), "running.num_batches_tracked", "a count")
    convention = check_choice(convention, tuple(CONVENTIONS), "convention")
    momentum = check_real(momentum, "momentum", 0.0, 1.0, allow_none=True)
    y, update, _ = batch_norm_forward(
        x,
        gain,
        bias,
        running,
        axis=axis,
        eps=eps,
        momentum=momentum,
        convention=convention,
        training=True,
        correction=correction,
        synchronous=False,
        sync=sync,
    )
    return y, running if update is None else update  # None: an empty batch

"""Batch statistics of a batch spread over the processes of a data-parallel group.

Each process holds one part of the global batch. The forward takes its
part's ``(count, mean, M2)`` per feature (the adapter's moments, in the
accumulation dtype), packs them into one buffer and all-gathers it: **one
collective**. Every process merges the same stack with
:func:`~normcore._reference.moments.merge_stacked` (Chan's merge of ``k``
triples), so all of them hold bit-identical global statistics, and normalizes
its part with them. The backward of batch statistics needs two sums over the
global batch, ``sum(dy)`` and ``sum(dy * xhat)``: each process's part gives
them as the parameter gradients of the primitive's backward with the
statistics held fixed (the adapter's fast path), **one all-sum** adds them,
and two per-feature coefficients finish ``dx`` (:func:`synced_backward`). The
reducer (:mod:`normcore.sync`) only moves the buffers; the math is here and
in the primitive, once.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, NamedTuple

from .._plumbing import dispatch
from .._plumbing.compat import device_of
from .._plumbing.dispatch import is_empty
from .._reference.moments import merge_stacked
from .._reference.primitive import as_dtype, broadcast_param
from ..adapter import Gradients, Statistics
from ..sync import Reducer
from ..typing import Array

__all__ = [
    "SyncedStatistics",
    "check_reducer",
    "global_statistics",
    "synced_backward",
    "synced_batch_norm",
]


class SyncedStatistics(NamedTuple):
    """The global batch statistics one synchronized forward used (for its backward)."""

    count: Array  # 0-d: values per feature in the global batch, accumulation dtype
    mean: Array  # dimensions kept (broadcasts against x), accumulation dtype
    var: Array  # the sum of squares divided by count - correction
    correction: float


def check_reducer(sync: Any) -> Any:
    """Return ``sync`` if it is None or a :class:`normcore.sync.Reducer`; TypeError otherwise."""
    if sync is not None and not isinstance(sync, Reducer):
        raise TypeError(
            "sync must be None or a normcore.sync.Reducer (for example "
            "normcore.sync.TorchDistributed(), normcore.sync.MPI() or "
            f"normcore.sync.JaxAxis('batch')), got {type(sync).__name__}"
        )
    return sync


def global_statistics(call, x: Array, reducer: Any, correction: float) -> SyncedStatistics:
    """All-gather every process's ``(count, mean, M2)`` per feature and merge them."""
    adapter, xp, axis = call.adapter, call.xp, call.axis
    acc = adapter.accumulation_dtype(xp, x.dtype)
    features = x.shape[axis]
    device = device_of(x)
    if is_empty(x):  # an empty part still takes part in the collective, with count 0
        count = 0
        mean = m2 = xp.zeros((features,), dtype=acc, device=device)
    else:
        count, mean, m2 = dispatch.moments(
            adapter, xp, as_dtype(xp, x, acc), call.layout.reduce_axes
        )
        mean, m2 = xp.reshape(mean, (features,)), xp.reshape(m2, (features,))
    buffer = xp.concat([xp.full((1,), count, dtype=acc, device=device), mean, m2])
    gathered = reducer.all_gather(buffer)
    expected = (features * 2 + 1,)
    if gathered.ndim != 2 or tuple(gathered.shape[1:]) != expected:
        raise ValueError(
            f"{type(reducer).__name__}.all_gather must return shape (world_size, "
            f"{expected[0]}) for a buffer of shape {expected}, got {tuple(gathered.shape)}"
        )
    total, mean, m2 = merge_stacked(
        xp, gathered[:, :1], gathered[:, 1 : features + 1], gathered[:, features + 1 :]
    )
    total = xp.reshape(total, ())
    var = m2 / (total - correction)
    return SyncedStatistics(
        total,
        broadcast_param(xp, mean, (axis,), x.ndim),
        broadcast_param(xp, var, (axis,), x.ndim),
        float(correction),
    )


def synced_batch_norm(
    call, x: Array, gain: Array | None, bias: Array | None, reducer: Any, correction: float
) -> tuple[Array, SyncedStatistics]:
    """Batch norm of this process's part with the global batch's statistics: ``(y, stats)``.

    Differentiable where the adapter says how (torch: a custom autograd
    function whose backward is :func:`synced_backward`; JAX differentiates
    through the collective itself).
    """
    adapter, xp = call.adapter, call.xp

    def forward(x, gain, bias):
        stats = global_statistics(call, x, reducer, correction)
        layout = replace(call.layout, stats=Statistics(stats.mean, stats.var))
        return dispatch.normalize(adapter, xp, x, gain, bias, layout).y, stats

    def backward(dy, stats):
        return synced_backward(call, dy, x, gain, bias, stats, reducer)

    return dispatch.custom_gradient(adapter, forward, backward, (x, gain, bias))


def synced_backward(
    call,
    dy: Array,
    x: Array,
    gain: Array | None,
    bias: Array | None,
    stats: SyncedStatistics,
    reducer: Any,
) -> Gradients:
    """Gradients of :func:`synced_batch_norm`'s ``y`` for this process's part (one all-sum).

    The primitive's backward through batch statistics is its backward with
    the statistics held fixed, minus their projection (``m`` over the global
    batch, ``n`` values, correction ``k``)::

        dx = dx_fixed - gain * rstd * (m(dy) + xhat * m(dy * xhat) * n / (n - k))

    and ``sum(dy)``, ``sum(dy * xhat)`` are the fixed backward's own ``dbias``
    and ``dgain``. So the adapter's fast fixed-statistics backward runs on
    this part, one all-sum makes its two parameter gradients global, and two
    per-feature coefficients finish ``dx``. ``dgain``/``dbias`` returned are
    this part's contributions (a data-parallel wrapper such as DDP adds or
    averages them over processes, as for any parameter); ``dx`` is the
    gradient of the global batch's loss.
    """
    adapter, xp, axis, layout = call.adapter, call.xp, call.axis, call.layout
    acc = adapter.accumulation_dtype(xp, x.dtype)
    features, device = x.shape[axis], device_of(x)
    xa, dya = as_dtype(xp, x, acc), as_dtype(xp, dy, acc)
    # ones stand in for absent parameters: the sums are needed all the same
    ones = xp.ones((features,), dtype=acc, device=device)
    ga = ones if gain is None else as_dtype(xp, gain, acc)
    fixed_layout = replace(layout, stats=Statistics(stats.mean, stats.var), correction=0.0)
    fixed = dispatch.normalize_backward(adapter, xp, dya, xa, ga, ones, fixed_layout)
    total = reducer.all_sum(xp.concat([fixed.dgain, fixed.dbias]))
    sum_dy_xhat = broadcast_param(xp, total[:features], (axis,), x.ndim)
    sum_dy = broadcast_param(xp, total[features:], (axis,), x.ndim)
    rstd = 1.0 / xp.sqrt(stats.var + layout.eps)
    scale = broadcast_param(xp, ga, (axis,), x.ndim) * rstd / stats.count
    if stats.correction:
        sum_dy_xhat = sum_dy_xhat * (stats.count / (stats.count - stats.correction))
    slope = scale * sum_dy_xhat * rstd  # the projection, per feature, on x - mean
    offset = scale * sum_dy  # batch norm is always centered
    dx = fixed.dx - ((xa - stats.mean) * slope + offset)
    return Gradients(
        as_dtype(xp, dx, x.dtype),
        None if gain is None else as_dtype(xp, fixed.dgain, gain.dtype),
        None if bias is None else as_dtype(xp, fixed.dbias, bias.dtype),
    )

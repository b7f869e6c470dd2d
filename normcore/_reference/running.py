"""Running statistics of batch normalization: the update after one training batch.

PyTorch: ``new = (1 - momentum) * old + momentum * batch`` with the unbiased
batch variance; Keras and Flax: ``new = momentum * old + (1 - momentum) *
batch`` with the biased one; ``momentum`` None: the cumulative average of
every batch seen. Shared by :class:`normcore.BatchNorm` and
``normcore.torch.BatchNorm*d``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

from .._plumbing import dispatch
from .._plumbing.compat import has_no_values, namespace_of, without_grad
from ..typing import Array, DType, Namespace

__all__ = ["CONVENTIONS", "RunningStats", "running_update"]

# Each convention's default momentum.
CONVENTIONS = {"torch": 0.1, "keras": 0.99}


class RunningStats(NamedTuple):
    """Running statistics of batch norm: ``(mean, var, num_batches_tracked)``.

    Those of a :class:`normcore.BatchNorm` (and ``normcore.torch``'s), and
    what :func:`normcore.batch_norm_train` takes and returns (a named tuple,
    so a pytree for JAX). ``mean`` and ``var`` have one value per feature;
    ``num_batches_tracked`` is a 0-d integer array.
    """

    mean: Array
    var: Array
    num_batches_tracked: Array  # 0-d int64


def running_update(
    running: RunningStats,
    count: int,
    mean: Array,
    var: Array,
    momentum: float | None,
    convention: str,
    *,
    synchronous: bool = True,
    on_skip: Callable[[str], None] | None = None,
) -> RunningStats | None:
    """New running statistics after a batch of ``count`` values per feature, or None to skip.

    ``mean``/``var`` are the batch's mean and biased variance (any shape with
    one value per feature). The blend is computed in float32 for float16 and
    bfloat16 state (in the state's dtype otherwise) and rounded once to the
    state's dtype, so it overflows only where the result itself is not
    representable. An update whose new values are not all finite is skipped:
    a batch with NaN or infinite statistics, or one that would store an
    infinity (a variance beyond float16's range). With ``synchronous`` (the
    default) it is skipped by returning None after reporting why to
    ``on_skip`` (default: a ``RuntimeWarning``), which reads the result on the
    host; otherwise by returning the old values again, selected on the device
    without a report (no host synchronization, and traceable by
    ``torch.compile``; always so for torch ``meta`` tensors, which hold no
    values). Either way the running statistics stay finite, so a layer always
    accepts its own ``state_dict()`` back.
    """
    xp = namespace_of(running.mean)
    if has_no_values(running.mean):  # torch's meta tensors: nothing to read, shapes only
        synchronous = False
    shape = tuple(running.mean.shape)
    dtype = running.mean.dtype
    work = xp.float32 if xp.finfo(dtype).bits < 32 else dtype  # float16: blend in float32
    mean, var = (xp.astype(without_grad(xp.reshape(s, shape)), work) for s in (mean, var))
    if convention == "torch":  # count > 1: batch-norm validation refused one value
        var = var * (count / (count - 1))
    tracked = running.num_batches_tracked
    if momentum is None:
        count_so_far = int(tracked) if synchronous else xp.astype(tracked, work)
        weight = 1.0 / (count_so_far + 1)
    else:
        weight = momentum if convention == "torch" else 1.0 - momentum
    # A non-finite batch statistic makes its blend non-finite too (inf * 0 is NaN),
    # so one test of the rounded results covers the batch and the overflow.
    new_mean = _blend(xp, running.mean, mean, weight, work)
    new_var = _blend(xp, running.var, var, weight, work)
    finite = xp.all(xp.isfinite(new_mean)) & xp.all(xp.isfinite(new_var))
    if synchronous:
        # Lazy state (dask) is computed here, once, with the flag read next: the new
        # values then hold their results and never the graph of earlier batches.
        new_mean, new_var, new_count, finite = dispatch.settle(
            (new_mean, new_var, xp.asarray(tracked + 1), finite)
        )
    if synchronous and not bool(finite):
        if bool(xp.all(xp.isfinite(mean)) & xp.all(xp.isfinite(var))):
            reason = (
                f"the new running statistics overflow {dtype} (the batch's variance is "
                f"beyond its range); keep the running statistics in float32 (a float32 "
                f"module accepts float16 input) or scale the input down"
            )
        else:
            reason = "the batch has NaN or infinite statistics"
        message = (
            f"BatchNorm: {reason}; the running statistics and num_batches_tracked were "
            "left unchanged"
        )
        if on_skip is None:
            warnings.warn(message, RuntimeWarning, stacklevel=4)
        else:
            on_skip(message)
        return None
    if synchronous:
        return RunningStats(new_mean, new_var, new_count)  # asarray: NumPy keeps it 0-d
    return RunningStats(
        xp.where(finite, new_mean, running.mean),
        xp.where(finite, new_var, running.var),
        tracked + xp.astype(finite, tracked.dtype),
    )


def _blend(xp: Namespace, old: Array, batch: Array, weight: Any, work: DType) -> Array:
    """``old * (1 - weight) + batch * weight`` in ``work``, rounded once to ``old``'s dtype.

    Where the rounding would overflow the result is NaN (never a value the
    cast makes up, and no warning from the cast): the caller skips the update.
    """
    blended = xp.astype(old, work) * (1.0 - weight) + batch * weight
    if blended.dtype == old.dtype:
        return blended
    info = xp.finfo(old.dtype)
    top, eps = float(info.max), float(info.eps)
    # Round to nearest rounds up to infinity from max + half an ulp of max on.
    limit = top + eps * top / (2.0 - eps) / 2.0
    fits = xp.abs(blended) < limit  # False for NaN as well
    rounded = xp.astype(xp.where(fits, blended, xp.zeros_like(blended)), old.dtype)
    return xp.where(fits, rounded, xp.full_like(rounded, float("nan")))

"""Running statistics of batch normalization: the update after one training batch.

PyTorch: ``new = (1 - momentum) * old + momentum * batch`` with the unbiased
batch variance; Keras and Flax: ``new = momentum * old + (1 - momentum) *
batch`` with the biased one; ``momentum`` None: the cumulative average of
every batch seen. Shared by :class:`normcore.BatchNorm` and
``normcore.torch.BatchNorm*d``.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

from .._plumbing.compat import namespace_of, without_grad
from ..typing import Array

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
) -> RunningStats | None:
    """New running statistics after a batch of ``count`` values per feature, or None to skip.

    ``mean``/``var`` are the batch's mean and biased variance (any shape with
    one value per feature). A batch with non-finite statistics is skipped:
    with ``synchronous`` (the default) by returning None with a
    ``RuntimeWarning``, which reads the statistics on the host; otherwise by
    returning the old values again, selected on the device without a warning
    (no host synchronization, and traceable by ``torch.compile``).
    """
    xp = namespace_of(running.mean)
    shape = tuple(running.mean.shape)
    mean, var = (without_grad(xp.reshape(s, shape)) for s in (mean, var))
    finite = xp.all(xp.isfinite(mean)) & xp.all(xp.isfinite(var))
    if synchronous and not bool(finite):
        warnings.warn(
            "BatchNorm: the batch has NaN or infinite statistics; the running "
            "statistics and num_batches_tracked were left unchanged",
            RuntimeWarning,
            stacklevel=4,
        )
        return None
    if convention == "torch":  # count > 1: batch-norm validation refused one value
        var = var * (count / (count - 1))
    tracked = running.num_batches_tracked
    dtype = running.mean.dtype
    if momentum is None:
        count_so_far = int(tracked) if synchronous else xp.astype(tracked, dtype)
        weight = 1.0 / (count_so_far + 1)
    else:
        weight = momentum if convention == "torch" else 1.0 - momentum
    new_mean = running.mean * (1.0 - weight) + xp.astype(mean, dtype) * weight
    new_var = running.var * (1.0 - weight) + xp.astype(var, dtype) * weight
    if synchronous:
        return RunningStats(new_mean, new_var, xp.asarray(tracked + 1))  # NumPy: keep 0-d
    return RunningStats(
        xp.where(finite, new_mean, running.mean),
        xp.where(finite, new_var, running.var),
        tracked + xp.astype(finite, tracked.dtype),
    )

"""Statistics the primitive and the dataset-level tools share: two-pass moments, Chan's merge.

* :func:`centered_moments`: mean and variance in two passes over data shifted
  by a sample, never ``E[x**2] - E[x]**2``.
* :func:`chan_merge`: the parallel merge of two ``(count, mean, M2)`` triples
  (Chan, Golub & LeVeque, 1979), exact up to round-off in any order and grouping;
  :func:`merge_stacked`: the same merge of ``k`` triples at once (the triples of
  the processes of a data-parallel group, :mod:`normcore.sync`).
"""

from __future__ import annotations

import math

from ..typing import Array, Namespace

__all__ = ["batch_moments", "centered_moments", "chan_merge", "merge_stacked", "moment_sums"]


def _first_along(x: Array, axes: tuple[int, ...]) -> Array:
    index = tuple(slice(0, 1) if a in axes else slice(None) for a in range(x.ndim))
    return x[index]


def centered_moments(
    xp: Namespace, x: Array, axes: tuple[int, ...], correction: float = 0.0
) -> tuple[Array, Array, Array]:
    """Return ``(mean, x - mean, var)`` over ``axes`` with dimensions kept.

    Two passes over data shifted by its first element along ``axes``: the
    shift keeps large-mean data accurate and makes a constant slice give an
    exactly zero ``x - mean`` (so its normalized output is exactly the bias).
    ``var`` divides the sum of squares by ``count - correction``.
    """
    shift = _first_along(x, axes)
    shifted = x - shift
    offset = xp.mean(shifted, axis=axes, keepdims=True)
    centered = shifted - offset
    count = math.prod(x.shape[a] for a in axes)
    var = xp.sum(centered * centered, axis=axes, keepdims=True) / (count - correction)
    return shift + offset, centered, var


def moment_sums(xp: Namespace, x: Array, axes: tuple[int, ...]) -> tuple[int, Array, Array]:
    """Return ``(count, mean, M2)`` over ``axes`` with dimensions kept: Chan's merge's triple.

    ``M2`` is the sum of squared deviations from the mean, from the same two
    shifted passes as :func:`centered_moments`. The reference of
    :meth:`normcore.adapter.Adapter.moments`.
    """
    mean, centered, _ = centered_moments(xp, x, axes)
    return (
        math.prod(x.shape[a] for a in axes),
        mean,
        xp.sum(centered * centered, axis=axes, keepdims=True),
    )


def batch_moments(xp: Namespace, x: Array, axis: int) -> tuple[int, Array, Array]:
    """Return ``(count, mean, var)`` of ``x`` per index of ``axis``, in ``x``'s dtype.

    ``mean`` and the biased ``var`` keep ``x``'s dimensions (size one except
    along ``axis``); ``count`` is the number of values per index of ``axis``.
    """
    reduce_axes = tuple(a for a in range(x.ndim) if a != axis)
    mean, _, var = centered_moments(xp, x, reduce_axes)
    return math.prod(x.shape[a] for a in reduce_axes), mean, var


def chan_merge(
    a: tuple[int, Array, Array], b: tuple[int, Array, Array]
) -> tuple[int, Array, Array]:
    """Merge two ``(count, mean, M2)`` triples (Chan, Golub & LeVeque)::

    n = n_a + n_b,   delta = mean_b - mean_a
    mean = mean_a + delta * n_b / n
    M2   = M2_a + M2_b + delta**2 * n_a * n_b / n
    """
    count_a, mean_a, m2_a = a
    count_b, mean_b, m2_b = b
    if count_a == 0:
        return b
    count = count_a + count_b
    delta = mean_b - mean_a
    mean = mean_a + delta * (count_b / count)
    m2 = m2_a + m2_b + delta * delta * (count_a * count_b / count)
    return count, mean, m2


def merge_stacked(
    xp: Namespace, counts: Array, means: Array, m2s: Array
) -> tuple[Array, Array, Array]:
    """Merge ``k`` triples stacked along axis 0 into one ``(count, mean, M2)``::

        n = sum_i n_i,   mean = mean_1 + sum_i n_i * (mean_i - mean_1) / n
        M2 = sum_i M2_i + sum_i n_i * (mean_i - mean)**2

    :func:`chan_merge` applied to all ``k`` at once: the deviations are taken
    from the merged mean, never ``E[x**2] - E[x]**2``. ``counts`` broadcasts
    against ``means``; a triple with count 0 contributes nothing (its mean and
    M2 must be finite, zeros say). The result is the same array on every
    process that merges the same stack. ``count`` is returned as an array.
    """
    count = xp.sum(counts, axis=0)
    # shifted by the first mean: equal means (a constant feature) merge to exactly that mean
    first = means[:1, ...]
    mean = first[0, ...] + xp.sum(counts * (means - first), axis=0) / count
    deviation = means - mean
    m2 = xp.sum(m2s, axis=0) + xp.sum(counts * deviation * deviation, axis=0)
    return count, mean, m2

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

from ..typing import Array, DType, Namespace

__all__ = [
    "batch_moments",
    "centered_moments",
    "chan_merge",
    "first_along",
    "merge_scaled",
    "merge_stacked",
    "moment_sums",
    "overflow_limit",
    "overflow_scale",
    "power_of_two_scale",
    "scaled_moment_sums",
    "shifted_mean",
]


def first_along(x: Array, axes: tuple[int, ...]) -> Array:
    index = tuple(slice(0, 1) if a in axes else slice(None) for a in range(x.ndim))
    return x[index]


def shifted_mean(
    xp: Namespace, x: Array, axes: tuple[int, ...], shift: Array | None = None
) -> tuple[Array, Array, Array]:
    """``(shift, offset, centered)``: the first values, the mean of ``x - shift``, ``x - mean``.

    The mean is ``shift + offset``; ``centered = (x - shift) - offset``, which
    is exactly 0 for a constant slice (the first pass of :func:`centered_moments`).
    ``shift`` may be given: the first values computed another way (the
    primitive's scaled statistics pass the first values of ``x`` times the
    scale's inverse, which equal the first values of the scaled ``x`` exactly).
    """
    shift = first_along(x, axes) if shift is None else shift
    shifted = x - shift
    offset = xp.mean(shifted, axis=axes, keepdims=True)
    return shift, offset, shifted - offset


def centered_moments(
    xp: Namespace, x: Array, axes: tuple[int, ...], correction: float = 0.0
) -> tuple[Array, Array, Array]:
    """Return ``(mean, x - mean, var)`` over ``axes`` with dimensions kept.

    Two passes over data shifted by its first element along ``axes``: the
    shift keeps large-mean data accurate and makes a constant slice give an
    exactly zero ``x - mean`` (so its normalized output is exactly the bias).
    ``var`` divides the sum of squares by ``count - correction``.
    """
    shift, offset, centered = shifted_mean(xp, x, axes)
    count = math.prod([x.shape[a] for a in axes])
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
        math.prod([x.shape[a] for a in axes]),
        mean,
        xp.sum(centered * centered, axis=axes, keepdims=True),
    )


def overflow_scale(
    xp: Namespace, x: Array, axes: tuple[int, ...], count: int, where: Array | None = None
) -> Array:
    """Per statistic over ``axes``, a power of two to divide ``x`` by: no sum of squares overflows.

    ``count`` is the number of values each statistic will be taken over (all
    of ``x`` along ``axes``, or more when chunks are merged). The scale is one
    (no scaling) unless the largest magnitude ``a`` exceeds
    ``sqrt(max / (16 * count))``: the shift by a first value doubles
    magnitudes at most, centering doubles them again, and ``count`` squares
    are summed. Otherwise it is ``2**floor(log2(a))`` (at most ``2**(emax - 1)``,
    whose reciprocal is still a normal number), which brings the values into
    ``[-4, 4]``; a power of two divides them without rounding.
    ``where`` (broadcastable to the statistics) limits the scaling to where
    it is true. NaN magnitudes keep the scale one (NaN statistics stay NaN).
    """
    amax = xp.max(xp.abs(x), axis=axes, keepdims=True)
    needed = amax > overflow_limit(xp, x.dtype, count)
    return power_of_two_scale(xp, amax, needed if where is None else needed & where)


def overflow_limit(xp: Namespace, dtype: DType, count: int) -> float:
    """The magnitude above which sums of ``count`` centered squares may overflow ``dtype``."""
    return math.sqrt(xp.finfo(dtype).max / (16 * count))


def power_of_two_scale(xp: Namespace, magnitude: Array, needed: Array) -> Array:
    """``2**floor(log2(magnitude))`` where ``needed``, else one.

    At most ``2**(emax - 1)``: its reciprocal is a normal number (subnormal
    ones may be flushed to zero), and values up to ``magnitude`` come out of
    the division within ``[-4, 4]``.
    """
    top = math.frexp(xp.finfo(magnitude.dtype).max)[1] - 2  # max < 2**emax; log2 rounds up
    one = xp.ones_like(magnitude)
    # the logarithm of one where no scale is needed: never of zero (a warning on NumPy blocks)
    exponent = xp.floor(xp.log2(xp.where(needed, magnitude, one)))
    return xp.where(needed, 2.0 ** xp.minimum(exponent, xp.full_like(magnitude, top)), one)


def scaled_moment_sums(
    xp: Namespace, x: Array, axes: tuple[int, ...], count: int
) -> tuple[int, Array, Array, Array]:
    """``(n, mean, M2, scale)``: :func:`moment_sums` of ``x / scale`` (:func:`overflow_scale`).

    The triple of ``x`` itself is ``(n, mean * scale, M2 * scale**2)``; in
    this form it is finite for any finite ``x``, even where ``M2`` itself is
    beyond the dtype's range. ``count`` is as in :func:`overflow_scale`.
    """
    scale = overflow_scale(xp, x, axes, count)
    return (*moment_sums(xp, x / scale, axes), scale)


def merge_scaled(
    a: tuple[int, Array, Array, Array], b: tuple[int, Array, Array, Array]
) -> tuple[int, Array, Array, Array]:
    """:func:`chan_merge` of two :func:`scaled_moment_sums` triples, in the larger scale.

    Each side is brought to ``max(scale_a, scale_b)`` (a power of two over
    the other: exact, up to values that become subnormal next to the
    largest) and merged; the result carries that scale.
    """
    from .._plumbing.compat import namespace_of

    scale = namespace_of(a[3]).maximum(a[3], b[3])

    def rescaled(t):
        ratio = t[3] / scale
        return t[0], t[1] * ratio, t[2] * ratio * ratio

    return (*chan_merge(rescaled(a), rescaled(b)), scale)


def batch_moments(xp: Namespace, x: Array, axis: int) -> tuple[int, Array, Array]:
    """Return ``(count, mean, var)`` of ``x`` per index of ``axis``, in ``x``'s dtype.

    ``mean`` and the biased ``var`` keep ``x``'s dimensions (size one except
    along ``axis``); ``count`` is the number of values per index of ``axis``.
    """
    reduce_axes = tuple(a for a in range(x.ndim) if a != axis)
    mean, _, var = centered_moments(xp, x, reduce_axes)
    return math.prod([x.shape[a] for a in reduce_axes]), mean, var


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

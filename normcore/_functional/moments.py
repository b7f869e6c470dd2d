"""Numerically stable mean and variance: over chosen axes, and merged over a stream.

:func:`moments` reduces one array. :class:`Moments` accumulates per-feature
``(count, mean, M2)`` over batches of any sizes with Chan et al.'s parallel
merge, so the mean and variance of a whole training set (what batch
normalization uses at inference) can be computed over a dataset that never
fits in memory at once. :func:`population_stats` also offers the paper's own
estimator (Algorithm 2: averages of the per-batch statistics).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any, NamedTuple

from .._plumbing import dispatch
from .._plumbing.compat import device_of, is_array, library_label, namespace_of, without_grad
from .._plumbing.registry import adapter_for
from .._plumbing.validation import (
    check_arrays,
    check_bool,
    check_choice,
    check_correction,
    check_dtype_name,
    check_known_sizes,
    compatible_devices,
    normalize_axes,
    normalize_axis,
    resolve_dtype,
)
from .._reference.moments import chan_merge
from .._reference.primitive import as_dtype
from ..typing import Array

__all__ = ["Moments", "Population", "moments", "population_stats"]


def moments(
    x: Array,
    *,
    axis: int | tuple[int, ...] | None,
    correction: float = 0,
    keepdims: bool = False,
) -> tuple[Array, Array]:
    """Mean and variance of ``x`` over ``axis``, computed stably.

    Two passes over data shifted by a sample (never ``E[x**2] - E[x]**2``);
    float16/bfloat16 data is accumulated in float32.

    Parameters
    ----------
    x : array
        Real floating-point array of any supported library, at least 1-D.
    axis : int, tuple of int or None
        Axes to reduce; None reduces all of them.
    correction : float, default 0
        Degrees-of-freedom correction: the variance divides by
        ``count - correction`` (0 gives the biased variance, 1 the unbiased).
    keepdims : bool, default False
        Keep the reduced axes as size-one dimensions.

    Returns
    -------
    mean, var : array
        Same library, device and dtype as ``x``.

    Raises
    ------
    TypeError
        If ``x`` is not a real floating-point array or ``keepdims`` is not a bool.
    ValueError
        If ``correction`` is negative or leaves no degrees of freedom
        (``count - correction <= 0``), or ``axis`` is invalid.

    Examples
    --------
    >>> import numpy as np
    >>> import normcore
    >>> x = np.array([[1e8 + 1.0, 1e8 + 2.0, 1e8 + 3.0]])
    >>> mean, var = normcore.moments(x, axis=-1, correction=1)
    >>> float(mean[0] - 1e8), float(var[0])
    (2.0, 1.0)
    """
    xp = check_arrays(x)
    keepdims = check_bool(keepdims, "keepdims")
    axes = tuple(range(x.ndim)) if axis is None else tuple(sorted(normalize_axes(axis, x.ndim)))
    check_known_sizes(x, axes)
    count = math.prod(x.shape[a] for a in axes)
    correction = check_correction(correction, count, "the number of values reduced")
    adapter = adapter_for(x)
    acc = adapter.accumulation_dtype(xp, x.dtype)
    count, mean, m2 = dispatch.moments(adapter, xp, as_dtype(xp, x, acc), axes)
    var = m2 / (count - correction)
    if not keepdims:
        mean, var = xp.squeeze(mean, axis=axes), xp.squeeze(var, axis=axes)
    return xp.astype(mean, x.dtype), xp.astype(var, x.dtype)


class Population(NamedTuple):
    """Population statistics: per-feature mean, variance and the number of values."""

    mean: Any
    var: Any
    count: int


class Moments:
    """Mergeable per-feature count, mean and sum of squared deviations (M2).

    Each batch contributes its two-pass centered ``(count, mean, M2)``; batches
    are combined with the parallel merge of Chan, Golub & LeVeque (1979)::

        n = n_a + n_b,   delta = mean_b - mean_a
        mean = mean_a + delta * n_b / n
        M2   = M2_a + M2_b + delta**2 * n_a * n_b / n

    which is exact up to round-off for batches of any sizes, in any order and
    in any grouping, and never forms ``E[x**2] - E[x]**2``.

    Parameters
    ----------
    axis : int, default 1
        The feature (channel) axis of the batches; statistics are taken over
        every other axis, as in batch normalization.
    dtype : dtype or str, optional
        Dtype to accumulate in, of the batches' library (``"float64"`` for
        extra precision over float32 data). Default: the batches' own dtype
        (float32 for float16/bfloat16).

    Attributes
    ----------
    count : int
        Number of values per feature seen so far.
    mean, m2 : array or None
        Per-feature mean and sum of squared deviations (1-D, one value per
        feature); None before the first non-empty batch.

    See Also
    --------
    population_stats : The mean and unbiased variance of a stream of batches.

    Examples
    --------
    >>> import numpy as np
    >>> import normcore
    >>> data = np.random.default_rng(0).normal(5.0, 2.0, size=(1000, 3))
    >>> first = normcore.Moments().update(data[:300])
    >>> second = normcore.Moments().update(data[300:650]).update(data[650:])
    >>> merged = first.merge(second)
    >>> merged.count
    1000
    >>> bool(np.allclose(merged.variance(), data.var(axis=0, ddof=1), rtol=1e-13))
    True
    """

    def __init__(self, *, axis: int = 1, dtype: Any = None) -> None:
        if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
            raise TypeError(f"axis must be an int, got {library_label(axis)}")
        self.axis = int(axis)
        self._dtype = check_dtype_name(dtype)
        # A binary counter of partial (count, mean, M2) triples: entry i merges 2**k_i batches
        # with k_i decreasing. Pushing a batch merges equal-sized neighbours, so N batches form
        # a balanced tree of depth log2(N), not a chain of N merges: a lazy (dask) graph stays
        # shallow and the round-off grows with log N. At most log2(N) + 1 triples are held.
        self._levels: list[tuple[int, tuple[int, Any, Any]]] = []
        self._folded: tuple[int, Any, Any] | None = (0, None, None)

    @property
    def count(self) -> int:
        return self._state()[0]

    @property
    def mean(self) -> Any:
        return self._state()[1]

    @property
    def m2(self) -> Any:
        return self._state()[2]

    def _push(self, triple: tuple[int, Any, Any]) -> None:
        batches = 1
        while self._levels and self._levels[-1][0] == batches:
            below, partial = self._levels.pop()
            triple, batches = chan_merge(partial, triple), below + batches
        self._levels.append((batches, triple))
        self._folded = None

    def _state(self) -> tuple[int, Any, Any]:
        """The merge of every batch so far (folded from the counter on first read)."""
        if self._folded is None:
            folded = self._levels[-1][1]
            for _, partial in reversed(self._levels[:-1]):
                folded = chan_merge(partial, folded)
            self._folded = folded
        return self._folded

    def _set_state(self, triple: tuple[int, Any, Any]) -> None:
        self._levels = [] if triple[0] == 0 else [(1, triple)]
        self._folded = triple

    def update(self, x: Any) -> Moments:
        """Merge the batch ``x`` into the accumulator (in place) and return it.

        ``x`` needs at least two dimensions, the feature axis among them. A
        batch with no values (a zero-size batch axis) changes nothing. On any
        error the accumulator is unchanged.

        Raises
        ------
        TypeError
            If ``x`` is not a real floating-point array, or comes from another
            library than the earlier batches.
        ValueError
            If ``x`` has fewer than 2 dimensions, ``axis`` is out of range, or
            the number of features or the device differs from earlier batches.
        """
        self._add(x)
        return self

    def _add(self, x: Any, name: str = "x") -> tuple[int, Any, Any] | None:
        """:meth:`update`; return the batch's ``(count, mean, biased var)`` per feature.

        ``name`` is what error messages call ``x``.

        None for a batch without values. The statistics are cut from any
        autograd graph: accumulated state never keeps the batches' graphs alive.
        """
        xp = check_arrays(x, x_name=name)
        if x.ndim < 2:
            raise ValueError(
                f"{name} must have at least 2 dimensions (a batch axis and the feature axis), "
                f"got shape {tuple(x.shape)}"
            )
        axis = normalize_axis(self.axis, x.ndim)
        dtype = resolve_dtype(xp, self._dtype)
        if dtype is None:
            dtype = adapter_for(x).accumulation_dtype(xp, x.dtype)
        self._check_compatible(x, x.shape[axis], name)
        reduce_axes = tuple(a for a in range(x.ndim) if a != axis)
        check_known_sizes(x, reduce_axes, name)
        if math.prod(x.shape) == 0:
            return None
        x = as_dtype(xp, without_grad(x), dtype)
        count, mean, m2 = dispatch.moments(adapter_for(x), xp, x, reduce_axes)
        shape = (x.shape[axis],)
        mean, m2 = xp.reshape(mean, shape), xp.reshape(m2, shape)
        self._push((count, mean, m2))
        return count, mean, m2 / count

    def merge(self, other: Moments) -> Moments:
        """Return a new accumulator holding both ``self``'s and ``other``'s values.

        Neither operand changes. Merging two halves computed separately equals
        accumulating everything in one pass (up to round-off).
        """
        if not isinstance(other, Moments):
            raise TypeError(f"other must be a Moments, got {library_label(other)}")
        merged = Moments(axis=self.axis, dtype=self._dtype)
        merged._set_state(self._state())
        if other.mean is not None:
            merged._check_compatible(other.mean, other.mean.shape[0], "other")
            merged._set_state(chan_merge(self._state(), other._state()))
        return merged

    def variance(self, correction: float = 1) -> Any:
        """Per-feature variance ``M2 / (count - correction)``; unbiased by default.

        Raises
        ------
        ValueError
            If no values were added yet, ``count - correction <= 0`` (for
            example a single value with the unbiased variance) or
            ``correction`` is negative.
        """
        correction = check_correction(correction)
        if self.count == 0:
            raise ValueError("variance() needs values, but no batch with values was added yet")
        correction = check_correction(correction, self.count, "the number of values per feature")
        return self.m2 / (self.count - correction)

    def _check_compatible(self, array: Any, features: int, name: str) -> None:
        """``array`` (a batch, or another accumulator's mean) must match the earlier batches."""
        if self.mean is None:
            return
        if namespace_of(array) is not namespace_of(self.mean):
            raise TypeError(
                f"{name} must come from the same array library as the earlier batches "
                f"({library_label(self.mean)}), got {library_label(array)}"
            )
        device = device_of(array)
        if not compatible_devices(device_of(self.mean), device):
            raise ValueError(
                f"{name} is on device {device} but the earlier batches were on device "
                f"{device_of(self.mean)}"
            )
        if features != self.mean.shape[0]:
            raise ValueError(
                f"{name} has {features} features along axis {self.axis} but the earlier "
                f"batches had {self.mean.shape[0]}"
            )


ESTIMATORS = ("exact", "batch_average")


def population_stats(
    batches: Iterable[Any],
    *,
    axis: int = 1,
    correction: float = 1,
    dtype: Any = None,
    estimator: str = "exact",
) -> Population:
    """Mean and (by default unbiased) variance per feature over a stream of batches.

    Batch normalization normalizes at inference time with statistics of the
    whole training set. By default (``estimator="exact"``) this returns the
    exact mean and variance of all the values seen, as if the batches were
    concatenated: each batch is reduced with two-pass centered sums, then
    merged with Chan's parallel update (see :class:`Moments`), in one pass and
    with only one batch in memory at a time.

    The paper's Algorithm 2 (Ioffe & Szegedy, 2015) estimates the same
    quantities from per-batch statistics instead: ``E[x]`` is the average of
    the batch means and ``Var[x] = m / (m - 1) * average of the batch
    variances`` (``m`` values per feature in every batch). Both means agree
    for batches of equal sizes, but Algorithm 2's variance leaves out the
    spread of the batch means around ``E[x]`` (the between-batch variance),
    so it is smaller whenever the batch means differ. ``estimator=
    "batch_average"`` computes Algorithm 2: the unweighted average over the
    non-empty batches of each batch's mean and of its variance
    ``M2_B / (m_B - correction)``; with batches of equal sizes and the
    default ``correction=1`` this is exactly the paper's formula.

    Parameters
    ----------
    batches : iterable of arrays
        Batches of one library and device, each with the features along
        ``axis`` (``N x D``, ``N x C x H x W``, channels-last with ``axis=-1``).
    axis : int, default 1
        The feature axis; statistics are taken over every other axis.
    correction : float, default 1
        The variance divides the sum of squared deviations by
        ``count - correction`` (with ``"batch_average"``, each batch's by its
        own count minus ``correction``): 1 gives the unbiased variance that
        PyTorch's ``running_var`` stores, 0 the biased one (Keras, Flax).
    dtype : dtype or str, optional
        Dtype to accumulate in (``"float64"`` for float32 data that needs it);
        default: the batches' dtype (float32 for float16/bfloat16).
    estimator : {"exact", "batch_average"}, default "exact"
        ``"exact"``: the mean and variance of all the data;
        ``"batch_average"``: the paper's Algorithm 2 (see above).

    Returns
    -------
    Population
        Named tuple ``(mean, var, count)``: 1-D arrays with one value per
        feature in the batches' library and device, and the number of values
        per feature. They never carry an autograd graph.

    Raises
    ------
    TypeError
        If ``correction`` is not a real number or ``estimator`` not a str;
        and as for :meth:`Moments.update`.
    ValueError
        If the stream holds no values, or fewer than ``correction + 1`` per
        feature (per feature of any non-empty batch with ``"batch_average"``),
        ``correction`` is negative or ``estimator`` unknown; and as for
        :meth:`Moments.update`.

    Examples
    --------
    >>> import numpy as np
    >>> import normcore
    >>> rng = np.random.default_rng(0)
    >>> batches = [rng.normal(3.0, 2.0, size=(n, 4, 5, 5)) for n in (7, 1, 30)]
    >>> stats = normcore.population_stats(batches)
    >>> stats.count
    950
    >>> everything = np.concatenate(batches)
    >>> bool(np.allclose(stats.var, everything.var(axis=(0, 2, 3), ddof=1), rtol=1e-13))
    True

    Load them into a :class:`BatchNorm` for inference:

    >>> bn = normcore.BatchNorm(4, dtype="float64")
    >>> bn.load_state_dict({**bn.state_dict(), "running_mean": stats.mean,
    ...                     "running_var": stats.var})

    Two batches whose means differ (1 and 5): the exact variance of
    ``[0, 2, 4, 6]`` is 20/3; Algorithm 2 gives ``2 / 1 * mean(1, 1) = 2``:

    >>> halves = [np.array([[0.0], [2.0]]), np.array([[4.0], [6.0]])]
    >>> normcore.population_stats(halves).var
    array([6.66666667])
    >>> normcore.population_stats(halves, estimator="batch_average").var
    array([2.])
    """
    check_choice(estimator, ESTIMATORS, "estimator")
    correction = check_correction(correction)
    accumulator = Moments(axis=axis, dtype=dtype)
    mean_sum = var_sum = None
    averaged = 0  # batches in the averages of "batch_average"
    if is_array(batches):
        raise TypeError(
            "batches must be an iterable of arrays (a list, a generator, a data loader), "
            f"got a single {library_label(batches)}; wrap it in a list"
        )
    try:
        stream = iter(batches)
    except TypeError:
        raise TypeError(
            "batches must be an iterable of arrays (a list, a generator, a data loader), "
            f"got {library_label(batches)}"
        ) from None
    for index, batch in enumerate(stream):
        stats = accumulator._add(batch, f"batches[{index}]")
        if stats is None or estimator == "exact":
            continue
        count, mean, var = stats
        check_correction(correction, count, "the number of values per feature of every batch")
        var = var * (count / (count - correction))
        mean_sum = mean if mean_sum is None else mean_sum + mean
        var_sum = var if var_sum is None else var_sum + var
        averaged += 1
    if accumulator.count == 0:
        raise ValueError("batches must hold at least one value per feature, got none")
    if estimator == "exact":
        return Population(accumulator.mean, accumulator.variance(correction), accumulator.count)
    return Population(mean_sum / averaged, var_sum / averaged, accumulator.count)

"""Numerically stable mean and variance over chosen axes."""

from __future__ import annotations

import numbers

from ._primitive import accumulation_dtype, centered_moments
from ._registry import adapter_for
from ._validation import check_arrays, normalize_axes

__all__ = ["moments"]


def moments(x, *, axis, correction=0, keepdims=False):
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
    axes = tuple(range(x.ndim)) if axis is None else tuple(sorted(normalize_axes(axis, x.ndim)))
    if isinstance(correction, bool) or not isinstance(correction, numbers.Real):
        raise TypeError(f"correction must be a real number, got {type(correction).__name__}")
    count = 1
    for a in axes:
        count *= x.shape[a]
    if not 0 <= correction < count:
        raise ValueError(
            f"correction must be >= 0 and less than the number of values reduced ({count}), "
            f"got {correction!r}"
        )
    acc = accumulation_dtype(xp, adapter_for(x), x.dtype)
    xa = x if x.dtype == acc else xp.astype(x, acc)
    mean, _, var = centered_moments(xp, xa, axes, correction)
    if not keepdims:
        mean, var = xp.squeeze(mean, axis=axes), xp.squeeze(var, axis=axes)
    return xp.astype(mean, x.dtype), xp.astype(var, x.dtype)

"""float64 NumPy formulas of the normalization and its gradients, written apart from the core.

The oracle of ``normcore check`` and of the asv suite's ``track_`` benchmarks:
plain NumPy in float64, with no code shared with :mod:`normcore._reference`
(an oracle that shares the core's code would share its bugs).
"""

from __future__ import annotations

import numpy as np

__all__ = ["normalization"]


def normalization(x, dy, gain, bias, axes, eps, center=True, stats=None):
    """float64 ``[y, dx, dgain, dbias]`` of the normalization of ``x`` over ``axes``.

    ``gain``/``bias`` (or None) are already shaped to broadcast against ``x``;
    ``dgain``/``dbias`` are summed over every axis where the gain has size one
    and keep ``x``'s axis order (None without the parameter, or without ``dy``).
    ``stats`` (mean, var) fixes the statistics, which the gradient then does
    not flow through. ``dy`` None skips the gradients.
    """
    x = np.asarray(x, np.float64)
    if stats is None:
        mean = x.mean(axis=axes, keepdims=True) if center else 0.0
        var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    else:
        mean, var = stats
    rstd = 1.0 / np.sqrt(var + eps)
    xhat = (x - mean) * rstd
    y = xhat if gain is None else xhat * gain
    if bias is not None:
        y = y + bias
    if dy is None:
        return [y, None, None, None]
    dy = np.asarray(dy, np.float64)
    dxhat = dy if gain is None else dy * gain
    if stats is None:
        inner = dxhat - xhat * (dxhat * xhat).mean(axis=axes, keepdims=True)
        if center:
            inner = inner - dxhat.mean(axis=axes, keepdims=True)
    else:
        inner = dxhat
    param = gain if gain is not None else bias
    summed = ()
    if param is not None:  # broadcasting aligns trailing axes: the missing leading ones are 1
        shape = (1,) * (x.ndim - np.ndim(param)) + tuple(np.shape(param))
        summed = tuple(a for a in range(x.ndim) if shape[a] == 1)
    dgain = None if gain is None else (dy * xhat).sum(axis=summed)
    dbias = None if bias is None else dy.sum(axis=summed)
    return [y, rstd * inner, dgain, dbias]

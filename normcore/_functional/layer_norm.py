"""Layer normalization and RMS normalization: thin specializations of the primitive.

Layer norm (Ba, Kiros & Hinton, 2016, eq. 3) takes statistics per example over
the normalized axes; RMS norm is the same without centering. Both are the
normalization primitive with ``reduce_axes == param_axes == axis``.
"""

from __future__ import annotations

from .._plumbing import dispatch
from .._plumbing.registry import adapter_for
from .._plumbing.validation import (
    check_arrays,
    check_eps,
    check_eps_in,
    check_gradient,
    check_gradient_given,
    check_param_shape,
    normalize_axes,
)
from ..adapter import Adapter, Gradients, Layout
from ..typing import Array, Namespace

__all__ = [
    "layer_norm",
    "layer_norm_backward",
    "rms_norm",
    "rms_norm_backward",
]


def _layout(
    x: Array,
    gain: Array | None,
    bias: Array | None,
    axis: int | tuple[int, ...],
    eps: float,
    center: bool,
    dy: Array | None = None,
) -> tuple[Adapter, Namespace, Layout]:
    """Validate a call; return its adapter, namespace and layout."""
    xp = check_arrays(x, adopt=True, gain=gain, bias=bias, dy=dy)
    axes = normalize_axes(axis, x.ndim)
    eps = check_eps(eps)
    expected = tuple(x.shape[a] for a in axes)
    for name, param in (("gain", gain), ("bias", bias)):
        if param is not None and tuple(param.shape) != expected:  # message built only on error
            check_param_shape(
                param,
                expected,
                name,
                f"the sizes of x along axis={axes[0] if len(axes) == 1 else axes}",
            )
    check_gradient(dy, x)
    adapter = adapter_for(x)
    check_eps_in(eps, xp, adapter.accumulation_dtype(xp, x.dtype))
    return adapter, xp, Layout(tuple(sorted(axes)), axes, center, eps)


def layer_norm(
    x: Array,
    gain: Array | None = None,
    bias: Array | None = None,
    *,
    axis: int | tuple[int, ...] = -1,
    eps: float = 1e-5,
) -> Array:
    """Layer normalization: normalize each example over ``axis``, then scale and shift.

    Computes ``y = (x - mean) / sqrt(var + eps) * gain + bias`` with the mean
    and the biased variance taken over ``axis`` separately for every index of
    the other axes (Ba, Kiros & Hinton, 2016, eq. 3). The same computation is
    used in training and inference and works with a batch of one.

    Parameters
    ----------
    x : array
        Input of any array library supported by normcore (NumPy, CuPy, PyTorch,
        or any Array API library), real floating dtype, at least 1-D.
    gain, bias : array, optional
        Per-unit gain and bias with the shape of the normalized axes, in the
        order given by ``axis``. None means 1 and 0. Same library, device and
        dtype as ``x`` (float32 is also accepted for float16/bfloat16 ``x``).
    axis : int or tuple of int, default -1
        The normalized axes. ``-1`` for ``N x D`` data and for ``B x T x D``
        sequences (per example and per time step); ``(1, 2, 3)`` for a
        convolutional ``N x C x H x W`` layer as in the paper.
    eps : float, default 1e-5
        Added to the variance inside the square root; a finite number > 0.

    Returns
    -------
    y : array
        Same library, device, dtype and shape as ``x``. Statistics of float16
        and bfloat16 inputs are accumulated in float32.

    Raises
    ------
    TypeError
        If ``x`` is not an array or not real floating point, or ``gain``/``bias``
        come from another library or have an incompatible dtype.
    ValueError
        If ``axis`` is out of range or repeated, ``x`` is 0-d, ``gain``/``bias``
        have the wrong shape or live on another device, or ``eps`` is not > 0.

    See Also
    --------
    layer_norm_backward : Gradients of this function.
    rms_norm : The same without centering.

    Notes
    -----
    Statistics are computed in two passes over data shifted by a sample, never
    as ``E[x**2] - E[x]**2``, so inputs with a large mean keep their precision
    and a constant row normalizes to exactly ``bias``. PyTorch tensors that
    require grad are differentiable through this function with autograd.

    On float32/float64 torch tensors the default path is torch's own
    ``F.layer_norm``, whose float32 centring subtracts a mean rounded to
    float32: its error grows to about 1.5 ``ulp(mean) / std`` (1e-2 at mean
    1e5, std 1), where normcore's shifted statistics stay near 1e-6.
    :func:`normcore.reference_path` keeps them on torch tensors too. float32
    and bfloat16 inputs whose deviations from the mean exceed about 1e19
    overflow the float32 variance to ``inf`` and normalize to ``bias``
    (the optional numba kernels, which sum in float64, do not).

    Examples
    --------
    >>> import numpy as np
    >>> import normcore
    >>> x = np.array([[1.0, 2.0, 3.0], [10.0, 20.0, 60.0]])
    >>> y = normcore.layer_norm(x)
    >>> np.round(y, 4)
    array([[-1.2247,  0.    ,  1.2247],
           [-0.9258, -0.4629,  1.3887]])
    >>> np.round(normcore.layer_norm(x, gain=np.array([2.0, 2.0, 2.0]), bias=np.ones(3)), 3)
    array([[-1.449,  1.   ,  3.449],
           [-0.852,  0.074,  3.777]])

    Per example over channels and space, as for a convolutional layer:

    >>> images = np.random.default_rng(0).normal(size=(2, 3, 4, 4)).astype(np.float32)
    >>> normcore.layer_norm(images, axis=(1, 2, 3)).dtype
    dtype('float32')
    """
    adapter, xp, layout = _layout(x, gain, bias, axis, eps, center=True)
    return dispatch.normalize(adapter, xp, x, gain, bias, layout).y


def rms_norm(
    x: Array, gain: Array | None = None, *, axis: int | tuple[int, ...] = -1, eps: float = 1e-6
) -> Array:
    """Root-mean-square normalization: layer normalization without centering.

    Computes ``y = x / sqrt(mean(x**2) + eps) * gain`` over ``axis``.

    Parameters
    ----------
    x : array
        Input, real floating dtype, at least 1-D (any supported library).
    gain : array, optional
        Per-unit gain with the shape of the normalized axes (in ``axis``
        order); None means 1.
    axis : int or tuple of int, default -1
        The normalized axes.
    eps : float, default 1e-6
        Added to the mean square inside the square root; a finite number > 0.

    Returns
    -------
    y : array
        Same library, device, dtype and shape as ``x``.

    Raises
    ------
    TypeError, ValueError
        As for :func:`layer_norm`.

    See Also
    --------
    rms_norm_backward, layer_norm

    Examples
    --------
    >>> import numpy as np
    >>> import normcore
    >>> np.round(normcore.rms_norm(np.array([[3.0, 4.0]])), 4)
    array([[0.8485, 1.1314]])
    """
    adapter, xp, layout = _layout(x, gain, None, axis, eps, center=False)
    return dispatch.normalize(adapter, xp, x, gain, None, layout).y


def layer_norm_backward(
    dy: Array,
    x: Array,
    gain: Array | None = None,
    bias: Array | None = None,
    *,
    axis: int | tuple[int, ...] = -1,
    eps: float = 1e-5,
) -> Gradients:
    """Gradients of :func:`layer_norm` with respect to ``x``, ``gain`` and ``bias``.

    With ``xhat = (x - mean) * rstd`` and ``m`` the mean over ``axis``::

        dx    = rstd * (dxhat - m(dxhat) - xhat * m(dxhat * xhat)),  dxhat = dy * gain
        dgain = sum of dy * xhat over the other axes
        dbias = sum of dy over the other axes

    Parameters
    ----------
    dy : array
        Gradient of the loss with respect to the output; shape and dtype of ``x``.
    x, gain, bias, axis, eps
        The arguments the forward was called with.

    Returns
    -------
    Gradients
        Named tuple ``(dx, dgain, dbias)``; ``dgain``/``dbias`` are None where
        ``gain``/``bias`` were None. Each has its argument's library, device,
        dtype and shape.

    Raises
    ------
    TypeError, ValueError
        As for :func:`layer_norm`, and when ``dy`` does not match ``x``.

    Examples
    --------
    >>> import numpy as np
    >>> import normcore
    >>> x = np.array([[1.0, 2.0, 4.0]])
    >>> dy = np.array([[1.0, 0.0, 0.0]])
    >>> grads = normcore.layer_norm_backward(dy, x, gain=np.ones(3), bias=np.zeros(3))
    >>> np.round(grads.dx, 4)
    array([[ 0.2291, -0.3436,  0.1145]])
    >>> np.round(grads.dbias, 4)
    array([1., 0., 0.])
    """
    check_gradient_given(dy)
    adapter, xp, layout = _layout(x, gain, bias, axis, eps, center=True, dy=dy)
    return dispatch.normalize_backward(adapter, xp, dy, x, gain, bias, layout)


def rms_norm_backward(
    dy: Array,
    x: Array,
    gain: Array | None = None,
    *,
    axis: int | tuple[int, ...] = -1,
    eps: float = 1e-6,
) -> Gradients:
    """Gradients of :func:`rms_norm` with respect to ``x`` and ``gain``.

    ``dx = rstd * (dxhat - xhat * m(dxhat * xhat))`` with ``xhat = x * rstd``
    and ``dxhat = dy * gain``.

    Parameters
    ----------
    dy : array
        Gradient of the loss with respect to the output; shape and dtype of ``x``.
    x, gain, axis, eps
        The arguments the forward was called with.

    Returns
    -------
    Gradients
        Named tuple ``(dx, dgain, dbias)``; ``dbias`` is always None (RMS norm
        has no bias) and ``dgain`` is None when ``gain`` was None.

    Examples
    --------
    >>> import numpy as np
    >>> import normcore
    >>> grads = normcore.rms_norm_backward(np.array([[1.0, 0.0]]), np.array([[3.0, 4.0]]))
    >>> np.round(grads.dx, 4)
    array([[ 0.181 , -0.1358]])
    """
    check_gradient_given(dy)
    adapter, xp, layout = _layout(x, gain, None, axis, eps, center=False, dy=dy)
    return dispatch.normalize_backward(adapter, xp, dy, x, gain, None, layout)

"""Layer and RMS normalization layers: objects that own their gain and bias.

Thin stateful wrappers around :func:`normcore.layer_norm` and
:func:`normcore.rms_norm` following the :class:`normcore.Module` pattern; all
math is the functional API's.
"""

from __future__ import annotations

from typing import Any

from .._functional.layer_norm import (
    layer_norm,
    layer_norm_backward,
    rms_norm,
    rms_norm_backward,
)
from .._plumbing.validation import (
    check_bool,
    check_eps,
    check_int,
    check_normalized_shape,
    normalize_axes,
)
from ..adapter import Gradients
from ..typing import Array
from .module import Module

__all__ = ["LayerNorm", "RMSNorm"]


def _check_axis_count(axis: Any, shape: tuple[int, ...]) -> Any:
    if axis is None:
        return tuple(range(-len(shape), 0))
    items = axis if isinstance(axis, tuple | list) else (axis,)
    for item in items:  # the types now; the range once the input's rank is known
        check_int(item, "axis")
    count = len(axis) if isinstance(axis, tuple | list) else 1
    if count != len(shape):
        raise ValueError(
            f"axis must name {len(shape)} axes, one per dimension of normalized_shape "
            f"{shape}, got {axis!r}"
        )
    return tuple(axis) if isinstance(axis, list) else axis


class _Normalization(Module):
    """Shared body of LayerNorm and RMSNorm; subclasses set the class attributes below."""

    _parameter_names = ("gain", "bias")
    _default_eps = 1e-5

    def __init__(
        self,
        normalized_shape: Any,
        *,
        axis: Any = None,
        eps: float | None = None,
        affine: bool = True,
        like: Any = None,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        shape = check_normalized_shape(normalized_shape)
        axis = _check_axis_count(axis, shape)
        eps = check_eps(self._default_eps if eps is None else eps)
        affine = check_bool(affine, "affine")
        super().__init__(like=like, device=device, dtype=dtype)
        self._check_eps(eps)
        self.normalized_shape = shape
        self.axis = axis
        self.eps = eps
        self.affine = affine
        self._init_affine(shape, affine, with_bias="bias" in self._parameter_names)

    def __call__(self, x: Any) -> Any:
        """Normalize ``x`` and remember it (and the parameters used) for :meth:`backward`.

        Raises
        ------
        TypeError
            If ``x`` is not a real floating-point array of the layer's library,
            or its dtype is not the layer's (float16/bfloat16 ``x`` is accepted
            by a float32 layer).
        ValueError
            If ``x`` is on another device, or its normalized axes do not match
            ``normalized_shape``.
        """
        self._check_input(x)
        # The functional API only sees a shape mismatch through ``gain``; with
        # ``affine=False`` there is none, so the layer checks it itself.
        axes = normalize_axes(self.axis, x.ndim)
        got = tuple(x.shape[a] for a in axes)
        if got != self.normalized_shape:
            raise ValueError(
                f"x must have shape {self.normalized_shape} (normalized_shape) along axis="
                f"{self.axis!r}, got {got} (x has shape {tuple(x.shape)})"
            )
        y = self._forward(x, self.gain, self.bias, axes)
        self._saved = (x, self.gain, self.bias, axes)
        return y

    def backward(self, dy: Any) -> Any:
        """Return the gradient with respect to the last input; store the parameter gradients.

        ``grads()`` then returns ``{"gain": ..., "bias": ...}`` for the parameters
        that exist. The gradients are those of the parameters as they were in the
        forward call.
        """
        x, gain, bias, axes = self._require_saved()
        return self._store_gradients(self._backward(dy, x, gain, bias, axes))

    def _forward(self, x: Array, gain: Array, bias: Array, axes: tuple[int, ...]) -> Array:
        raise NotImplementedError

    def _backward(
        self, dy: Array, x: Array, gain: Array, bias: Array, axes: tuple[int, ...]
    ) -> Gradients:
        raise NotImplementedError

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.normalized_shape}, axis={self.axis!r}, eps={self.eps}, "
            f"affine={self.affine}; {self._placement()})"
        )


class LayerNorm(_Normalization):
    """Layer normalization layer with a learned gain and bias (Ba, Kiros & Hinton, 2016).

    Calling the layer computes :func:`normcore.layer_norm` with its parameters;
    :meth:`backward` returns the input gradient and stores the parameter
    gradients for an optimizer.

    Parameters
    ----------
    normalized_shape : int or tuple of int
        Sizes of the normalized axes; the shape of ``gain`` and ``bias``.
    axis : int or tuple of int, optional
        The normalized axes of the input, one per dimension of
        ``normalized_shape``, in its order. Default: the last
        ``len(normalized_shape)`` axes (``-1`` for an int), as in
        ``torch.nn.LayerNorm``.
    eps : float, optional
        Added to the variance inside the square root; default (None) 1e-5.
    affine : bool, default True
        Learn a gain (initialized to 1) and a bias (initialized to 0). With
        False the layer has no parameters.
    like, device, dtype
        Library, device and dtype of the parameters: see
        :class:`normcore.Module`. Default: float32 NumPy arrays.

    Attributes
    ----------
    gain, bias : array or None
        The parameters (None when ``affine=False``).

    Raises
    ------
    TypeError
        If ``normalized_shape`` is not an int or tuple of ints, ``affine`` is not a
        bool, or ``like``/``dtype`` are not an array library / real floating dtype.
    ValueError
        If a size is not positive, ``axis`` does not name one axis per
        dimension of ``normalized_shape``, or ``eps`` is not a finite number > 0.

    See Also
    --------
    layer_norm : The function this layer calls.

    Examples
    --------
    >>> import numpy as np
    >>> import normcore
    >>> layer = normcore.LayerNorm(3, dtype="float64")
    >>> x = np.array([[1.0, 2.0, 4.0]])
    >>> np.round(layer(x), 4)
    array([[-1.069 , -0.2673,  1.3363]])
    >>> dx = layer.backward(np.array([[1.0, 1.0, 0.0]]))
    >>> np.round(layer.grads()["gain"], 4), layer.grads()["bias"]
    (array([-1.069 , -0.2673,  0.    ]), array([1., 1., 0.]))
    >>> sorted(layer.state_dict())
    ['bias', 'gain']
    """

    _default_eps = 1e-5

    def _forward(self, x, gain, bias, axes):
        return layer_norm(x, gain, bias, axis=axes, eps=self.eps)

    def _backward(self, dy, x, gain, bias, axes):
        return layer_norm_backward(dy, x, gain, bias, axis=axes, eps=self.eps)


class RMSNorm(_Normalization):
    """RMS normalization layer with a learned gain: layer norm without centering or bias.

    Calling the layer computes :func:`normcore.rms_norm` with its gain.

    Parameters
    ----------
    normalized_shape : int or tuple of int
        Sizes of the normalized axes; the shape of ``gain``.
    axis : int or tuple of int, optional
        The normalized axes; default the last ``len(normalized_shape)`` axes.
    eps : float, optional
        Added to the mean square inside the square root; default (None) 1e-6.
    affine : bool, default True
        Learn a gain (initialized to 1); with False the layer has no parameters.
    like, device, dtype
        Library, device and dtype of the gain, as for :class:`LayerNorm`.

    Attributes
    ----------
    gain : array or None
        The parameter (None when ``affine=False``). ``bias`` is always None.

    Raises
    ------
    TypeError, ValueError
        As for :class:`LayerNorm`.

    See Also
    --------
    rms_norm : The function this layer calls.

    Examples
    --------
    >>> import numpy as np
    >>> import normcore
    >>> layer = normcore.RMSNorm(2, dtype="float64")
    >>> np.round(layer(np.array([[3.0, 4.0]])), 4)
    array([[0.8485, 1.1314]])
    >>> list(layer.state_dict())
    ['gain']
    """

    _parameter_names = ("gain",)
    _default_eps = 1e-6

    def _forward(self, x, gain, bias, axes):
        return rms_norm(x, gain, axis=axes, eps=self.eps)

    def _backward(self, dy, x, gain, bias, axes):
        return rms_norm_backward(dy, x, gain, axis=axes, eps=self.eps)

"""GroupNorm: group normalization with a learned per-channel gain and bias, as an object."""

from __future__ import annotations

from typing import Any

from .._functional.group_norm import group_norm, group_norm_backward
from .._plumbing.validation import (
    check_bool,
    check_eps,
    check_feature_count,
    check_int,
    check_num_groups,
    check_positive_int,
)
from .module import Module

__all__ = ["GroupNorm"]


class GroupNorm(Module):
    """Group normalization layer (Wu & He, 2018), ``torch.nn.GroupNorm``'s semantics.

    Calling the layer computes :func:`normcore.group_norm` with its
    parameters: the ``num_channels`` channels are split into ``num_groups``
    consecutive groups, each example's group is normalized over its channels
    and every spatial axis, then scaled and shifted per channel. Training and
    inference compute the same thing (no running statistics).

    Parameters
    ----------
    num_groups : int
        Number of groups; must divide ``num_channels``.
    num_channels : int
        Size of the channel axis of the inputs.
    axis : int, default 1
        The channel axis (``N x C x ...``); -1 for channels-last inputs. Not 0,
        the batch axis.
    eps : float, default 1e-5
        Added to the variance inside the square root.
    affine : bool, default True
        Learn a per-channel ``gain`` (init 1) and ``bias`` (init 0).
    like, device, dtype
        Library, device and dtype of the parameters (see :class:`normcore.Module`);
        NumPy float32 by default.

    Attributes
    ----------
    gain, bias : array or None
        Per-channel parameters, shape ``(num_channels,)`` (None with ``affine=False``).

    Raises
    ------
    TypeError
        If ``num_groups``/``num_channels``/``axis`` are not ints, ``affine``
        is not a bool, or ``like``/``dtype`` are not an array library / real
        floating dtype.
    ValueError
        If ``num_channels`` < 1, ``num_groups`` does not divide it, or ``eps``
        is not a finite number > 0.

    See Also
    --------
    group_norm : The function this layer calls.

    Examples
    --------
    >>> import numpy as np
    >>> import normcore
    >>> layer = normcore.GroupNorm(2, 4, dtype="float64")
    >>> x = np.arange(8.0).reshape(1, 4, 2)
    >>> np.round(layer(x), 4)
    array([[[-1.3416, -0.4472],
            [ 0.4472,  1.3416],
            [-1.3416, -0.4472],
            [ 0.4472,  1.3416]]])
    >>> dx = layer.backward(np.ones_like(x))
    >>> np.round(layer.grads()["gain"], 4), layer.grads()["bias"]
    (array([-1.7888,  1.7888, -1.7888,  1.7888]), array([2., 2., 2., 2.]))
    """

    _parameter_names = ("gain", "bias")

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        *,
        axis: int = 1,
        eps: float = 1e-5,
        affine: bool = True,
        like: Any = None,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        num_channels = check_positive_int(num_channels, "num_channels")
        num_groups = check_num_groups(num_groups, num_channels)
        axis = check_int(axis, "axis")
        if axis == 0:
            raise ValueError("axis must be the channel axis, not the batch axis 0, got axis=0")
        affine = check_bool(affine, "affine")
        self.eps = check_eps(eps)
        super().__init__(like=like, device=device, dtype=dtype)
        self._check_eps(self.eps)
        self.num_groups = num_groups
        self.num_channels = num_channels
        self.axis = axis
        self.affine = affine
        shape = (num_channels,)
        self._init_affine(shape, affine)

    def __call__(self, x: Any) -> Any:
        """Normalize ``x`` and remember it for :meth:`backward`.

        Raises
        ------
        TypeError
            If ``x`` is not a real floating-point array of the layer's library,
            or its dtype is not the layer's (float16/bfloat16 ``x`` is accepted
            by a float32 layer).
        ValueError
            If ``x`` is on another device, does not have ``num_channels``
            values along ``axis``, or as :func:`normcore.group_norm`.
        """
        self._check_input(x)
        check_feature_count(x, self.axis, self.num_channels, "num_channels")
        y = group_norm(x, self.num_groups, self.gain, self.bias, axis=self.axis, eps=self.eps)
        self._saved = (x, self.gain, self.bias)
        return y

    def backward(self, dy: Any) -> Any:
        """Return ``dx`` for the last forward call and store ``dgain``/``dbias``.

        The gradients are those of the parameters as they were in the forward call.
        """
        x, gain, bias = self._require_saved()
        grads = group_norm_backward(
            dy, x, self.num_groups, gain, bias, axis=self.axis, eps=self.eps
        )
        return self._store_gradients(grads)

    def __repr__(self) -> str:
        return (
            f"GroupNorm({self.num_groups}, {self.num_channels}, axis={self.axis}, eps={self.eps}, "
            f"affine={self.affine}; {self._placement()})"
        )

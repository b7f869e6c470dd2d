"""Drop-ins for ``torch.nn.LayerNorm`` and ``torch.nn.RMSNorm``, computed by normcore.

Both subclass their ``torch.nn`` namesake: torch's ``__init__`` registers the
parameters and buffers (so ``state_dict``, ``reset_parameters``,
``extra_repr`` and hooks are torch's own), after normcore has checked the
arguments; only ``forward`` is normcore's.
"""

from __future__ import annotations

import torch

from normcore._functional.layer_norm import layer_norm, rms_norm
from normcore._plumbing.compat import resolve_device
from normcore._plumbing.validation import check_bool, check_normalized_shape

from ._checks import check_eps_for, check_tensor, renamed

__all__ = ["LayerNorm", "RMSNorm"]


def _trailing_axes(module: torch.nn.Module, x: torch.Tensor) -> tuple[int, ...]:
    """The axes of ``x`` that ``module.normalized_shape`` covers, or a ValueError."""
    check_tensor(x)
    count = len(module.normalized_shape)
    got = tuple(x.shape[x.ndim - count :]) if x.ndim >= count else tuple(x.shape)
    if got != tuple(module.normalized_shape):
        raise ValueError(
            f"input must end with normalized_shape {tuple(module.normalized_shape)}, "
            f"got shape {tuple(x.shape)}"
        )
    return tuple(range(-count, 0))


class LayerNorm(torch.nn.LayerNorm):
    """Drop-in for ``torch.nn.LayerNorm`` computed by :func:`normcore.layer_norm`.

    A subclass of ``torch.nn.LayerNorm``: ``isinstance`` checks, ``state_dict``
    keys, ``reset_parameters``, ``extra_repr`` and hooks are torch's; the
    arguments are checked by normcore before anything is created.

    Parameters
    ----------
    normalized_shape : int or tuple of int
        Sizes of the trailing axes normalized over.
    eps : float, default 1e-5
        Added to the variance inside the square root.
    elementwise_affine : bool, default True
        Learn ``weight`` (initialized to 1) and, with ``bias=True``, ``bias`` (0).
    bias : bool, default True
        Learn a bias (only with ``elementwise_affine``).
    device, dtype : optional
        Of the parameters, as for ``torch.nn.LayerNorm``.

    Examples
    --------
    >>> import torch
    >>> import normcore
    >>> layer = normcore.torch.LayerNorm(3)
    >>> isinstance(layer, torch.nn.LayerNorm)
    True
    >>> layer.load_state_dict(torch.nn.LayerNorm(3).state_dict())
    <All keys matched successfully>
    >>> layer(torch.tensor([[1.0, 2.0, 4.0]])).detach().round(decimals=4)
    tensor([[-1.0690, -0.2673,  1.3363]])
    """

    def __init__(
        self,
        normalized_shape: int | tuple[int, ...],
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            check_normalized_shape(normalized_shape),
            check_eps_for(eps, dtype),
            check_bool(elementwise_affine, "elementwise_affine"),
            check_bool(bias, "bias"),
            resolve_device(torch, device),  # torch.nn: a RuntimeError; normcore: ValueError
            dtype,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Layer-normalize ``x`` over its trailing ``normalized_shape`` axes."""
        axes = _trailing_axes(self, x)
        try:
            return layer_norm(x, self.weight, self.bias, axis=axes, eps=self.eps)
        except (TypeError, ValueError) as error:  # named as torch names them
            raise renamed(error, x, weight=self.weight, bias=self.bias) from None


class RMSNorm(torch.nn.RMSNorm):
    """Drop-in for ``torch.nn.RMSNorm`` computed by :func:`normcore.rms_norm`.

    A subclass of ``torch.nn.RMSNorm``, as :class:`LayerNorm` is of ``torch.nn.LayerNorm``.

    Parameters
    ----------
    normalized_shape : int or tuple of int
        Sizes of the trailing axes normalized over.
    eps : float, optional
        Added to the mean square; None (the default, as in torch) uses
        ``torch.finfo(x.dtype).eps`` of each input.
    elementwise_affine : bool, default True
        Learn ``weight`` (initialized to 1).
    device, dtype : optional
        Of the parameters.

    Examples
    --------
    >>> import torch
    >>> import normcore
    >>> layer = normcore.torch.RMSNorm(2, eps=1e-6)
    >>> layer(torch.tensor([[3.0, 4.0]])).detach().round(decimals=4)
    tensor([[0.8485, 1.1314]])
    """

    def __init__(
        self,
        normalized_shape: int | tuple[int, ...],
        eps: float | None = None,
        elementwise_affine: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            check_normalized_shape(normalized_shape),
            None if eps is None else check_eps_for(eps, dtype),  # None: torch's per-dtype default
            check_bool(elementwise_affine, "elementwise_affine"),
            resolve_device(torch, device),
            dtype,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """RMS-normalize ``x`` over its trailing ``normalized_shape`` axes."""
        axes = _trailing_axes(self, x)
        try:
            eps = torch.finfo(x.dtype).eps if self.eps is None else self.eps
            return rms_norm(x, self.weight, axis=axes, eps=eps)
        except (TypeError, ValueError) as error:  # named as torch names them
            raise renamed(error, x, weight=self.weight) from None

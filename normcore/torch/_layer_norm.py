"""Drop-ins for ``torch.nn.LayerNorm`` and ``torch.nn.RMSNorm``, computed by normcore."""

from __future__ import annotations

import torch

from normcore._functional.layer_norm import layer_norm, rms_norm
from normcore._plumbing.validation import check_bool, check_eps, check_normalized_shape

from ._affine import affine_parameters, reset_affine

__all__ = ["LayerNorm", "RMSNorm"]


class _TrailingNorm(torch.nn.Module):
    """Parameters ``weight`` (and ``bias``) over the trailing axes, shared by both modules."""

    def __init__(
        self,
        normalized_shape: int | tuple[int, ...],
        eps: float | None,
        elementwise_affine: bool,
        bias: bool,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
    ) -> None:
        super().__init__()
        self.normalized_shape = check_normalized_shape(normalized_shape)
        self.eps = eps if eps is None else check_eps(eps)  # None: RMSNorm's per-dtype default
        self.elementwise_affine = check_bool(elementwise_affine, "elementwise_affine")
        factory = {"device": device, "dtype": dtype}
        affine_parameters(self, self.normalized_shape, elementwise_affine, bias, factory)

    def reset_parameters(self) -> None:
        """Set the weight to 1 and the bias to 0."""
        reset_affine(self)

    def _axes(self, x: torch.Tensor) -> tuple[int, ...]:
        count = len(self.normalized_shape)
        got = tuple(x.shape[x.ndim - count :]) if x.ndim >= count else tuple(x.shape)
        if got != self.normalized_shape:
            raise ValueError(
                f"input must end with normalized_shape {self.normalized_shape}, "
                f"got shape {tuple(x.shape)}"
            )
        return tuple(range(-count, 0))

    def extra_repr(self) -> str:
        return (
            f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
        )


class LayerNorm(_TrailingNorm):
    """Drop-in for ``torch.nn.LayerNorm`` computed by :func:`normcore.layer_norm`.

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
        super().__init__(normalized_shape, eps, elementwise_affine, bias, device, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Layer-normalize ``x`` over its trailing ``normalized_shape`` axes."""
        return layer_norm(x, self.weight, self.bias, axis=self._axes(x), eps=self.eps)


class RMSNorm(_TrailingNorm):
    """Drop-in for ``torch.nn.RMSNorm`` computed by :func:`normcore.rms_norm`.

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
        super().__init__(normalized_shape, eps, elementwise_affine, False, device, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """RMS-normalize ``x`` over its trailing ``normalized_shape`` axes."""
        eps = torch.finfo(x.dtype).eps if self.eps is None else self.eps
        return rms_norm(x, self.weight, axis=self._axes(x), eps=eps)

"""Drop-in for ``torch.nn.GroupNorm``, computed by :func:`normcore.group_norm`."""

from __future__ import annotations

import torch

from normcore._functional.group_norm import group_norm
from normcore._plumbing.validation import (
    check_bool,
    check_eps,
    check_feature_count,
    check_num_groups,
    check_positive_int,
)

from ._affine import affine_parameters, reset_affine

__all__ = ["GroupNorm"]


class GroupNorm(torch.nn.Module):
    """Drop-in for ``torch.nn.GroupNorm`` computed by :func:`normcore.group_norm`.

    Parameters
    ----------
    num_groups : int
        Number of groups; must divide ``num_channels``.
    num_channels : int
        ``C`` of an input ``(N, C, *)``.
    eps : float, default 1e-5
    affine : bool, default True
        Learn a per-channel ``weight`` (init 1) and ``bias`` (init 0).
    device, dtype : optional
        Of the parameters.
    bias : bool, default True
        Learn a bias (with ``affine``).

    Examples
    --------
    >>> import torch
    >>> import normcore
    >>> gn = normcore.torch.GroupNorm(2, 4)
    >>> gn(torch.arange(8.0).reshape(1, 4, 2)).detach().round(decimals=4)
    tensor([[[-1.3416, -0.4472],
             [ 0.4472,  1.3416],
             [-1.3416, -0.4472],
             [ 0.4472,  1.3416]]])
    """

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.num_channels = check_positive_int(num_channels, "num_channels")
        self.num_groups = check_num_groups(num_groups, self.num_channels)
        self.eps = check_eps(eps)
        self.affine = check_bool(affine, "affine")
        affine_parameters(
            self, (self.num_channels,), affine, bias, {"device": device, "dtype": dtype}
        )

    def reset_parameters(self) -> None:
        """Set the weight to 1 and the bias to 0."""
        reset_affine(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Group-normalize ``x`` of shape ``(N, C, *)``."""
        check_feature_count(x, 1, self.num_channels, "num_channels")
        return group_norm(x, self.num_groups, self.weight, self.bias, eps=self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"

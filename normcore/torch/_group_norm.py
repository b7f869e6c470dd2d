"""Drop-in for ``torch.nn.GroupNorm``, computed by :func:`normcore.group_norm`."""

from __future__ import annotations

import torch

from normcore._functional.group_norm import group_norm
from normcore._plumbing.compat import resolve_device
from normcore._plumbing.validation import (
    check_bool,
    check_feature_count,
    check_num_groups,
    check_positive_int,
)

from ._checks import check_eps_for, check_tensor, renamed

__all__ = ["GroupNorm"]


class GroupNorm(torch.nn.GroupNorm):
    """Drop-in for ``torch.nn.GroupNorm`` computed by :func:`normcore.group_norm`.

    A subclass of ``torch.nn.GroupNorm``: ``isinstance`` checks, ``state_dict``
    keys, ``reset_parameters``, ``extra_repr`` and hooks are torch's; the
    arguments are checked by normcore before anything is created.

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
    >>> isinstance(gn, torch.nn.GroupNorm)
    True
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
        num_channels = check_positive_int(num_channels, "num_channels")
        super().__init__(
            check_num_groups(num_groups, num_channels),
            num_channels,
            check_eps_for(eps, dtype),
            check_bool(affine, "affine"),
            resolve_device(torch, device),  # torch.nn: a RuntimeError; normcore: ValueError
            dtype,
            bias=check_bool(bias, "bias"),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Group-normalize ``x`` of shape ``(N, C, *)``."""
        check_tensor(x)
        if x.dim() < 2:  # torch.nn's rule, named as torch names it
            raise ValueError(
                f"input must have at least 2 dimensions (N, C, *), got shape {tuple(x.shape)}"
            )
        check_feature_count(x, 1, self.num_channels, "num_channels", x_name="input")
        try:
            return group_norm(x, self.num_groups, self.weight, self.bias, eps=self.eps)
        except (TypeError, ValueError) as error:  # named as torch names them
            raise renamed(error, x, weight=self.weight, bias=self.bias) from None

"""The ``weight``/``bias`` parameters every normalization drop-in registers, as torch.nn does."""

from __future__ import annotations

from typing import Any

import torch

from normcore._plumbing.validation import check_bool

__all__ = ["affine_parameters", "reset_affine"]


def affine_parameters(
    module: torch.nn.Module,
    shape: tuple[int, ...],
    affine: bool,
    bias: bool,
    factory: dict[str, Any],
) -> None:
    """Register ``weight`` (ones) and ``bias`` (zeros), or None where absent."""
    check_bool(bias, "bias")
    weight = torch.nn.Parameter(torch.ones(shape, **factory)) if affine else None
    module.register_parameter("weight", weight)
    bias_value = torch.nn.Parameter(torch.zeros(shape, **factory)) if affine and bias else None
    module.register_parameter("bias", bias_value)


def reset_affine(module: torch.nn.Module) -> None:
    """Set ``module.weight`` to 1 and ``module.bias`` to 0 where they exist."""
    if module.weight is not None:
        torch.nn.init.ones_(module.weight)
    if module.bias is not None:
        torch.nn.init.zeros_(module.bias)

"""Adapter for PyTorch tensors: dispatch to torch's native normalization kernels.

torch is imported only when a tensor reaches normcore (by then the user has
imported it). Calls that map onto ``torch.nn.functional`` run its native,
autograd-aware kernels; every other call runs the reference path, which is
composed of torch operations and therefore differentiable as well.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any

from normcore._adapter import Adapter
from normcore._primitive import Normalized

__all__ = ["TorchAdapter", "adapter"]


def _trailing(axes: tuple[int, ...], ndim: int) -> bool:
    return axes == tuple(range(ndim - len(axes), ndim))


def _normalize(xp, adapter, x, gain, bias, *, reduce_axes, param_axes, center, eps, stats=None):
    """``torch.nn.functional.layer_norm``/``rms_norm`` for trailing-axes layouts."""
    if stats is not None or param_axes != reduce_axes or not _trailing(reduce_axes, x.ndim):
        return NotImplemented
    torch = sys.modules["torch"]
    if x.dtype not in (torch.float32, torch.float64):
        # torch's CPU kernels for float16/bfloat16 lose exactness on constant and
        # large-mean rows (1e4 in float16 normalizes to 0.08, not 0); the
        # reference path accumulates in float32 and keeps it.
        return NotImplemented
    if any(p is not None and p.dtype != x.dtype for p in (gain, bias)):
        return NotImplemented
    functional = torch.nn.functional
    shape = tuple(x.shape[a] for a in reduce_axes)
    if center:
        return Normalized(functional.layer_norm(x, shape, gain, bias, eps), None, None)
    return Normalized(functional.rms_norm(x, shape, gain, eps), None, None)


class TorchAdapter(Adapter):
    """PyTorch: CPU and CUDA tensors, native kernels where a call maps onto them."""

    name = "torch"
    library = "torch"
    # An unpinned ``pip install torch`` may pull several GB of CUDA wheels.
    install_hint = "pip install torch==2.13.0 (pin the torch version you want)"

    def owns(self, x: Any) -> bool:
        return isinstance(x, sys.modules["torch"].Tensor)

    def devices(self) -> list[str]:
        import torch

        found = ["cpu"]
        if torch.cuda.is_available():
            found += [
                f"cuda:{i} ({torch.cuda.get_device_name(i)})"
                for i in range(torch.cuda.device_count())
            ]
        return found

    def check_devices(self) -> list[Any]:
        import torch

        return [torch.device("cpu")] + [
            torch.device("cuda", i) for i in range(torch.cuda.device_count())
        ]

    def fast_paths(self) -> Mapping[str, Callable[..., Any]]:
        return {"normalize": _normalize}


adapter = TorchAdapter()

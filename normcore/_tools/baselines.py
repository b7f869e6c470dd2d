"""Data and native baselines shared by ``normcore bench`` and the asv suite.

Benchmark inputs (normal data with a chosen mean, drawn reproducibly) and the
torch kernels normcore is compared with, forward and through autograd's native
backward, written once so that both tools measure the same thing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["native_backward", "random", "torch_batch_norm", "torch_layer_norm"]


def random(
    shape: tuple[int, ...],
    dtype: str = "float32",
    seed: int = 0,
    mean: float = 0.0,
    std: float = 1.0,
) -> np.ndarray:
    """Normal random NumPy data of ``dtype`` (float32 is drawn directly: it is faster)."""
    rng = np.random.default_rng(seed)
    draw_dtype = np.float64 if dtype == "float64" else np.float32
    data = rng.standard_normal(shape, dtype=draw_dtype)
    data *= std
    data += mean
    return data.astype(dtype, copy=False)


def native_backward(forward: Callable[..., Any], dy: Any, *inputs: Any) -> Callable[[], Any]:
    """Record ``forward(*inputs)`` with autograd once; return a call of its native backward.

    The returned function runs only the backward kernels of the recorded graph
    (``retain_graph`` keeps it for the next repetition) and returns ``dx``.
    """
    import torch

    leaves = [None if t is None else t.detach().requires_grad_(True) for t in inputs]
    y = forward(*leaves)
    return lambda: torch.autograd.grad(y, leaves[0], dy, retain_graph=True)[0]


def torch_layer_norm(x: Any, gain: Any, bias: Any, eps: float) -> Any:
    """``torch.nn.functional.layer_norm`` over the last axis."""
    import torch

    return torch.nn.functional.layer_norm(x, x.shape[-1:], gain, bias, eps)


def torch_batch_norm(x: Any, gain: Any, bias: Any, eps: float, axis: int = 1) -> Any:
    """Training-mode ``torch.nn.functional.batch_norm``; channels-last (``axis=-1``) as a view."""
    import torch

    if axis in (-1, x.ndim - 1) and x.ndim > 2:
        order = (0, x.ndim - 1, *range(1, x.ndim - 1))
        back = (0, *range(2, x.ndim), 1)
        y = torch.nn.functional.batch_norm(x.permute(order), None, None, gain, bias, True, 0.1, eps)
        return y.permute(back)
    return torch.nn.functional.batch_norm(x, None, None, gain, bias, True, 0.1, eps)


def torch_rms_norm(x: Any, gain: Any, eps: float) -> Any:
    """``torch.nn.functional.rms_norm`` over the last axis."""
    import torch

    return torch.nn.functional.rms_norm(x, x.shape[-1:], gain, eps)


def torch_group_norm(x: Any, groups: int, gain: Any, bias: Any, eps: float) -> Any:
    """``torch.nn.functional.group_norm`` of an ``N x C x ...`` tensor."""
    import torch

    return torch.nn.functional.group_norm(x, groups, gain, bias, eps)

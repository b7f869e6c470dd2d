"""Adapter for PyTorch tensors: native kernels where they keep normcore's numerics.

torch is imported only when a tensor reaches normcore (by then the user has
imported it). Layer/RMS norm layouts run ``torch.nn.functional``'s native,
autograd-aware kernels; other layouts run torch's Welford statistics and one
fused elementwise op. Everything else runs the reference path, which is
composed of torch operations and therefore differentiable as well.
"""

from __future__ import annotations

import sys
from typing import Any

from normcore._reference.primitive import broadcast_param
from normcore.adapter import Adapter, Gradients, Layout, Normalized

__all__ = ["TorchAdapter", "adapter"]


def _fused(torch, xp, x, gain, bias, layout: Layout) -> Normalized:
    """Statistics by torch's Welford ``var_mean``, then ``bias + (x - mean) * (gain * rstd)``.

    Two passes over ``x`` instead of the reference's six to eight, still
    centered before scaling (constant channels give exactly ``bias``) and
    differentiable by autograd.
    """
    axes, stats = layout.reduce_axes, layout.stats
    if stats is not None:
        mean = None if stats.mean is None else stats.mean.to(x.dtype)
        var = stats.var.to(x.dtype)
    elif layout.center:
        var, mean = torch.var_mean(x, dim=axes, correction=layout.correction, keepdim=True)
    else:
        mean, var = None, torch.mean(torch.square(x), dim=axes, keepdim=True)
    rstd = torch.rsqrt(var + layout.eps)
    scale = rstd if gain is None else rstd * broadcast_param(xp, gain, layout.param_axes, x.ndim)
    centered = x if mean is None else x - mean
    if bias is None:
        return Normalized(centered * scale, mean, var)
    shift = broadcast_param(xp, bias, layout.param_axes, x.ndim)
    return Normalized(torch.addcmul(shift, centered, scale), mean, var)


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

    def normalize(self, xp, x, gain, bias, layout, *, need_stats=False):
        """Native kernels for float32/float64: F.layer_norm/rms_norm, else Welford + one fused op.

        The layer-norm layout (trailing axes, parameters on the same axes) runs
        ``torch.nn.functional.layer_norm``/``rms_norm``. Every other layout
        (batch, group, instance norm) runs :func:`_fused`: torch's native
        ``batch_norm`` and ``group_norm`` CPU kernels (torch 2.13) fold the
        normalization into ``x * alpha + beta``, so a constant channel of value
        1e4 normalizes to ``bias`` off by 0.04 in float32, where normcore
        guarantees exactly ``bias``. float16/bfloat16 stay on the reference
        path: torch's CPU kernels lose the same exactness there (1e4 in float16
        normalizes to 0.08, not 0).
        """
        torch = sys.modules["torch"]
        if x.dtype not in (torch.float32, torch.float64):
            return NotImplemented
        if any(p is not None and p.dtype != x.dtype for p in (gain, bias)):
            return NotImplemented
        if layout.correction and not layout.center:  # torch's mean square has no correction
            return NotImplemented
        if (
            layout.stats is None
            and not need_stats
            and not layout.correction
            and layout.is_trailing(x.ndim)
        ):
            functional = torch.nn.functional
            shape = tuple(x.shape[a] for a in layout.reduce_axes)
            if layout.center:
                y = functional.layer_norm(x, shape, gain, bias, layout.eps)
            else:
                y = functional.rms_norm(x, shape, gain, layout.eps)
            return Normalized(y, None, None)
        return _fused(torch, xp, x, gain, bias, layout)

    def normalize_backward(self, xp, dy, x, gain, bias, layout):
        """aten's ``native_layer_norm_backward`` for the layer-norm layout."""
        torch = sys.modules["torch"]
        if (
            not layout.center
            or layout.stats is not None
            or layout.correction
            or not layout.is_trailing(x.ndim)
            or x.dtype not in (torch.float32, torch.float64)
            or (gain is not None and gain.dtype != x.dtype)
            or (bias is not None and bias.dtype != x.dtype)
        ):
            return NotImplemented
        shape = tuple(x.shape[a] for a in layout.reduce_axes)
        # aten's backward takes the forward's saved statistics; var_mean recomputes
        # them with one read of x and no x-sized output.  Like the statistics saved
        # by a forward, they are constants to autograd: aten's double backward
        # accounts for their dependence on x itself (and has no derivative for them).
        var, mean = torch.var_mean(x.detach(), dim=layout.reduce_axes, correction=0, keepdim=True)
        rstd = torch.rsqrt(var + layout.eps)
        need_dgain = gain is not None
        dx, dgain, _ = torch.ops.aten.native_layer_norm_backward(
            dy, x, shape, mean, rstd, gain, None, [True, need_dgain, False]
        )
        # dbias is the plain sum of dy; aten only computes it next to a weight.
        # (torch's sum over dim=() would reduce everything: a 1-D x needs a copy.)
        leading = tuple(range(x.ndim - len(shape)))
        dbias = None
        if bias is not None:
            dbias = dy.sum(dim=leading) if leading else dy.clone()
        return Gradients(dx, dgain, dbias)


adapter = TorchAdapter()

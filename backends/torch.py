"""Adapter for PyTorch tensors: native kernels where they keep normcore's numerics.

torch is imported only when a tensor reaches normcore (by then the user has
imported it). Plain, contiguous float32/float64 CPU tensors that autograd does
not record (no ``requires_grad``, or inside ``torch.no_grad()``) run the NumPy
adapter's compiled kernels on NumPy views of their memory
(:func:`_on_numpy_kernels`): those are exact in one pass, where torch's
native kernels need a shifted copy of the input first, and 2-3x faster. The
rest, below, is what autograd records, CUDA tensors and everything under
``torch.compile``/``torch.func``. Layer/RMS norm layouts run
``torch.nn.functional``'s native, autograd-aware kernels. Batch-norm and
group-norm (and so instance-norm) layouts run torch's native
``batch_norm``/``group_norm`` on shifted input (:func:`_native_batch_norm`,
:func:`_native_group_norm`); other layouts run torch's Welford statistics and
one fused elementwise op. Everything else runs
the reference path, which is composed of torch operations and therefore
differentiable as well.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
from typing import Any

from normcore._reference import primitive
from normcore._reference.primitive import broadcast_param
from normcore.adapter import Adapter, Gradients, Layout, Normalized

__all__ = ["TorchAdapter", "adapter"]


def _numpy_views(torch, tensors, recorded: bool = False) -> list | None:
    """NumPy views of plain, contiguous float32/float64 CPU tensors autograd does not record.

    None when any tensor is not such a tensor. With ``recorded``, tensors
    that autograd records qualify too (:func:`_recorded_kernels` makes the
    autograd node itself).

    Such calls run the NumPy adapter's compiled kernels on the tensors' own
    memory (:func:`_on_numpy_kernels`): one pass over the input where torch's
    native kernels would need a shifted copy first to keep normcore's
    accuracy. A tensor subclass (other than ``Parameter``), a conjugate or
    negative view, or any tensor that autograd would record keeps torch's own
    kernels.
    """
    if torch.jit.is_tracing():  # the trace would record no operation, only a constant
        return None
    recording = not recorded and torch.is_grad_enabled()
    views = []
    for t in tensors:
        if t is None:
            views.append(None)
            continue
        if (
            type(t) not in (torch.Tensor, torch.nn.Parameter)  # a Parameter is a plain tensor
            or t.dtype not in (torch.float32, torch.float64)
            or not t.is_cpu
            or t.layout != torch.strided
            or not t.is_contiguous()
            or (recording and t.requires_grad)
            or t.is_conj()
            or t.is_neg()
        ):
            return None
        # .numpy() refuses a tensor that requires grad; detach() costs a new tensor object
        views.append(t.detach().numpy() if t.requires_grad else t.numpy())
    return views


@functools.cache
def _numpy_side() -> tuple:
    """What :func:`_on_numpy_kernels` needs of normcore's NumPy side, imported once."""
    from normcore.backends import _numpy_kernels
    from normcore.backends.numpy import adapter as numpy_adapter

    from normcore._plumbing.compat import namespace_of
    from normcore.adapter import Statistics

    return numpy_adapter, namespace_of, Statistics, _numpy_kernels


def _on_numpy_kernels(
    torch, method: str, tensors, layout: Layout, recorded: bool = False, **options
) -> Any:
    """The NumPy adapter's ``method`` on NumPy views of ``tensors`` (and the layout's
    statistics), its results as tensors sharing their memory; or ``NotImplemented``
    when the tensors do not qualify (:func:`_numpy_views`) or the NumPy adapter declines."""
    stats = layout.stats
    views = _numpy_views(torch, [*tensors, *(() if stats is None else stats)], recorded)
    if views is None:
        return NotImplemented
    numpy_adapter, namespace_of, Statistics, kernels = _numpy_side()
    if stats is not None:
        *views, mean, var = views
        layout = dataclasses.replace(layout, stats=Statistics(mean, var))
    call = getattr(numpy_adapter, method)
    # torch's kernels give inf silently where a cast of the NumPy results overflows;
    # torch.set_num_threads limits these calls as it limits torch's kernels (the cap
    # is entered only where it binds: a context manager per call costs microseconds).
    limit = torch.get_num_threads()
    with numpy_adapter.overflow_ignored():
        if limit < kernels.most_threads():
            with kernels.thread_cap(limit):
                result = call(namespace_of(views[0]), *views, layout, **options)
        else:
            result = call(namespace_of(views[0]), *views, layout, **options)
    if result is NotImplemented:
        return NotImplemented
    return type(result)(*(None if a is None else torch.from_numpy(a) for a in result))


def _recorded_kernels(torch, adapter, xp, x, gain, bias, layout: Layout, need_stats: bool):
    """The compiled NumPy kernels where autograd records: one node, its backward compiled too.

    For the batch-norm layout only (batch statistics or given ones). torch's
    native ``batch_norm`` needs a shifted copy of ``x`` to keep normcore's
    accuracy (:func:`_first_values`), an extra pass and allocation in every
    forward; the channel kernels are exact without it, and measured faster
    than torch.nn forward and backward together (docs/performance.md). The
    layer-norm layout keeps aten's kernels: the row kernels' backward
    recomputes the statistics and measured 1.9-3.4x aten's (256x512, one
    thread). The forward runs here, then :func:`_kernel_node` attaches its
    output to autograd's graph; statistics for running averages
    (``need_stats``) are constants, as torch's own are. ``NotImplemented``
    where the kernels decline (the native path runs), and for given
    statistics that need a gradient themselves.
    """
    stats = layout.stats
    if layout.channel_axis(x.ndim) is None or not layout.center:
        return NotImplemented
    if stats is not None and any(s is not None and s.requires_grad for s in stats):
        return NotImplemented
    result = _on_numpy_kernels(
        torch, "normalize", (x, gain, bias), layout, recorded=True, need_stats=need_stats
    )
    if result is NotImplemented:
        return NotImplemented
    mean, var = (None, None) if stats is None else stats
    y = _kernel_node(torch).apply((result.y, adapter, xp, layout), x, gain, bias, mean, var)
    return Normalized(y, result.mean, result.var)


@functools.cache
def _kernel_node(torch):
    """The autograd function of :func:`_recorded_kernels` (torch imported lazily).

    Its backward runs the NumPy adapter's compiled backward on NumPy views.
    Where that declines, where the backward itself is recorded
    (``create_graph=True``: a double backward) or runs under a transform
    (``is_grads_batched``, or a ``torch.func`` transform of the backward of a
    graph recorded outside it), it runs the reference backward,
    composed of torch operations and so differentiable at every order; the
    two agree to rounding (the suite checks both against torch.nn and finite
    differences).
    """

    class CompiledKernels(torch.autograd.Function):
        @staticmethod
        def forward(ctx, computed, x, gain, bias, mean, var):
            y, ctx.adapter, ctx.xp, ctx.layout = computed
            # saved (not only kept in the layout) so that autograd checks that
            # none was modified in place before the backward
            ctx.save_for_backward(x, gain, bias, mean, var)
            return y

        @staticmethod
        def backward(ctx, dy):
            x, gain, bias, _, _ = ctx.saved_tensors
            wanted = ctx.needs_input_grad[1:4]
            grads = NotImplemented
            # (is_grads_batched hands in a legacy batched dy with no transform on the stack)
            batched = torch._C._functorch.is_legacy_batchedtensor(dy)
            if not torch.is_grad_enabled() and not _transformed(torch) and not batched:
                grads = _on_numpy_kernels(
                    torch, "normalize_backward", (dy.contiguous(), x, gain, bias), ctx.layout
                )
            if grads is NotImplemented:
                grads = primitive.normalize_backward(
                    ctx.adapter, ctx.xp, dy, x, gain, bias, ctx.layout
                )
            return (None, *(g if w else None for g, w in zip(grads, wanted, strict=True)), None,
                    None)  # fmt: skip

    return CompiledKernels


def _overflowed(rstd) -> bool:
    """Whether a statistic's variance overflowed (or was NaN): its ``rstd`` is 0 or NaN.

    Reads one value on the host. The native kernels then decline and the
    reference path runs, which recomputes such statistics on scaled values.
    """
    return not rstd.min().item() > 0


def _fused(torch, xp, x, gain, bias, layout: Layout) -> Normalized | Any:
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
    # 1 / sqrt, not rsqrt: autograd differentiates rsqrt as -rstd**3 / 2, which is subnormal
    # (and loses digits) from var ~ 1e26 in float32 (1e205 in float64); 1 / sqrt's chain is not
    rstd = 1.0 / torch.sqrt(var + layout.eps)
    if stats is None and _overflowed(rstd):
        return NotImplemented
    scale = rstd if gain is None else rstd * broadcast_param(xp, gain, layout.param_axes, x.ndim)
    centered = x if mean is None else x - mean
    if bias is None:
        return Normalized(centered * scale, mean, var)
    shift = broadcast_param(xp, bias, layout.param_axes, x.ndim)
    return Normalized(torch.addcmul(shift, centered, scale), mean, var)


def _first_values(x, axes: tuple[int, ...]):
    """``x`` at index 0 of each of ``axes`` (kept with size 1): one value per statistic.

    The shift that keeps torch's native kernels exact: torch's CPU
    ``batch_norm``/``group_norm`` compute ``x * a + (bias - mean * a)``, which
    for a constant channel of 1e4 misses ``bias`` by 0.04 in float32. On
    ``x - x[first]`` a constant channel is exactly 0, so its mean is 0 and
    the kernel returns exactly ``bias``; the normalization itself is
    unchanged (it does not depend on a shift of its statistics' values), and
    the shift is a constant to autograd for the same reason, at every order.
    What remains of the cancellation is relative to ``|mean - x[first]| /
    std`` (a few units of the last place for any one value of the data),
    not to ``|mean| / std``.
    """
    index = tuple(slice(0, 1) if a in axes else slice(None) for a in range(x.ndim))
    return x.detach()[index]


def _batch_norm_layout(x, layout: Layout) -> bool:
    """Statistics per index of axis 1 over every other axis, parameters on axis 1."""
    return layout.param_axes == (1,) and layout.reduce_axes == (0, *range(2, x.ndim))


def _native_batch_norm(torch, x, gain, bias, layout: Layout, need_stats: bool) -> Normalized | Any:
    """torch's native ``batch_norm`` (and its fused backward) on shifted input.

    Batch statistics: the kernel runs in training mode on ``x - x[0, :, 0...]``
    (see :func:`_first_values`); when the statistics are needed, fresh zero
    buffers with ``momentum=1`` receive exactly the batch mean and unbiased
    variance the kernel computed. Given statistics: ``x - mean`` in eval mode
    with a zero running mean, so ``mean`` still gets its gradient (the
    subtraction's); ``var`` must not need one (the kernel gives none).
    """
    channels = x.shape[1]
    shape = (1, channels) + (1,) * (x.ndim - 2)
    cudnn = torch.backends.cudnn.enabled
    if layout.stats is not None:
        mean = layout.stats.mean.to(x.dtype)
        var = layout.stats.var.to(x.dtype).reshape(channels)
        zeros = torch.zeros(channels, dtype=x.dtype, device=x.device)
        y = torch.batch_norm(x - mean, gain, bias, zeros, var, False, 0.0, layout.eps, cudnn)
        return Normalized(y, mean, layout.stats.var)
    shift = _first_values(x, layout.reduce_axes)
    if not need_stats:
        y, _, rstd = torch.native_batch_norm(
            x - shift, gain, bias, None, None, True, 0.0, layout.eps
        )
        return NotImplemented if _overflowed(rstd) else Normalized(y, None, None)
    mean, var = (torch.zeros(channels, dtype=x.dtype, device=x.device) for _ in range(2))
    y, _, rstd = torch.native_batch_norm(x - shift, gain, bias, mean, var, True, 1.0, layout.eps)
    if _overflowed(rstd):
        return NotImplemented
    count = layout.count(tuple(x.shape))  # > 1: batch-norm validation refused one value
    return Normalized(y, mean.reshape(shape) + shift, var.reshape(shape) * ((count - 1) / count))


def _native_batch_norm_backward(torch, dy, x, gain, bias, layout: Layout) -> Gradients:
    """aten's fused backward of batch norm with fixed statistics (``train=False``).

    One pass gives ``dx = dy * gain * rstd`` and the two per-channel sums
    ``dgain = sum(dy * xhat)``, ``dbias = sum(dy)``; the statistics are constants.
    """
    stats = layout.stats
    channels = x.shape[1]
    mean = stats.mean.reshape(channels).to(x.dtype)
    var = stats.var.reshape(channels).to(x.dtype)
    dx, dgain, dbias = torch.ops.aten.native_batch_norm_backward(
        dy, x, gain, mean, var, None, None, False, layout.eps,
        [True, gain is not None, bias is not None],
    )  # fmt: skip
    return Gradients(dx, dgain, dbias)


def _group_norm_layout(x, layout: Layout) -> bool:
    """Grouped ``(N, G, C // G, *spatial)``: statistics per ``(n, g)``, parameters per channel."""
    return (
        x.ndim >= 3
        and layout.param_axes == (1, 2)
        and layout.reduce_axes == tuple(range(2, x.ndim))
    )


def _native_group_norm(torch, x, gain, bias, layout: Layout, need_stats: bool) -> Normalized | Any:
    """torch's native ``group_norm`` on ``x - x[:, :, 0, 0...]`` (see :func:`_first_values`).

    When the statistics are needed (instance norm's running statistics),
    torch's Welford ``var_mean`` computes them first (without autograd: they
    are only read) and its mean is the shift; Welford's mean of a constant
    group is exactly that constant, so the kernel stays exact.
    """
    n, groups, size = x.shape[:3]
    gain, bias = (None if p is None else p.reshape(groups * size) for p in (gain, bias))
    # One row per (n, g): a broadcast over (N, G, 1) runs several times faster
    # than over the grouped (N, G, 1, 1, 1) view.
    rows = x.reshape(n, groups, -1)
    mean = var = None
    if need_stats:
        var, mean = torch.var_mean(rows.detach(), dim=2, correction=0, keepdim=True)
        shifted = rows - mean
        stats_shape = (n, groups) + (1,) * (x.ndim - 2)
        mean, var = mean.reshape(stats_shape), var.reshape(stats_shape)
    else:
        shifted = rows - _first_values(rows, (2,))
    # native_group_norm wants a contiguous input (torch.group_norm made one itself)
    flat = shifted.reshape(n, groups * size, -1).contiguous()
    y, _, rstd = torch.native_group_norm(
        flat, gain, bias, n, groups * size, flat.shape[2], groups, layout.eps
    )
    if _overflowed(rstd):
        return NotImplemented
    return Normalized(y.reshape(x.shape), mean, var)


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

    def resolve_device(self, device: Any) -> Any:
        """``device`` as a ``torch.device``, or a ValueError naming it.

        torch itself raises RuntimeError for a name it does not know and fails
        only when allocating on a CUDA device that is not there (an
        AssertionError without CUDA); both are checked here, before anything is made.
        """
        if device is None:
            return None
        import torch

        try:
            resolved = torch.device(device)
        except (RuntimeError, TypeError, ValueError) as error:
            raise ValueError(
                f"device={device!r} is not a torch device ({error}); pass e.g. 'cpu', 'cuda', "
                "'cuda:0' or a torch.device"
            ) from None
        if resolved.type == "cuda":
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if count == 0:
                raise ValueError(
                    f"device={device!r}: torch has no CUDA device here "
                    "(torch.cuda.is_available() is False); use device='cpu'"
                )
            if resolved.index is not None and resolved.index >= count:
                raise ValueError(
                    f"device={device!r}: torch has {count} CUDA device(s) here, "
                    f"cuda:0 to cuda:{count - 1}"
                )
        return resolved

    def check_devices(self) -> list[Any]:
        import torch

        return [torch.device("cpu")] + [
            torch.device("cuda", i) for i in range(torch.cuda.device_count())
        ]

    def is_concrete(self, x: Any) -> bool:
        """Not under torch.compile, forward-mode AD or torch.func, and not a ``meta`` tensor."""
        return x.device.type != "meta" and not _transformed(sys.modules["torch"])

    def normalize(self, xp, x, gain, bias, layout, *, need_stats=False):
        """Native kernels for float32/float64: torch's layer/RMS/batch/group norm, else Welford.

        The layer-norm layout (trailing axes, parameters on the same axes) runs
        ``torch.nn.functional.layer_norm``/``rms_norm``. The batch-norm layout
        (channel axis 1) runs ``torch.batch_norm`` and the group-norm layout
        (instance norm included) ``torch.group_norm``, both on shifted input:
        their CPU kernels (torch 2.13) fold the normalization into
        ``x * alpha + beta``, so on ``x`` itself a constant channel of value
        1e4 normalizes to ``bias`` off by 0.04 in float32, where normcore
        guarantees exactly ``bias`` (see :func:`_first_values`). Every other
        layout (channels-last, a degrees-of-freedom correction, given
        statistics whose variance needs a gradient) runs :func:`_fused`.
        float16/bfloat16 stay on the reference path: torch's CPU kernels lose
        the same exactness there (1e4 in float16 normalizes to 0.08, not 0).
        """
        torch = sys.modules["torch"]
        if x.dtype not in (torch.float32, torch.float64):
            return NotImplemented
        if any(p is not None and p.dtype != x.dtype for p in (gain, bias)):
            return NotImplemented
        if layout.correction and not layout.center:  # torch's mean square has no correction
            return NotImplemented
        concrete = self.is_concrete(x)
        if layout.stats is None and not concrete:
            return NotImplemented  # the overflow check reads values: the reference's has no branch
        if concrete:
            if torch.is_grad_enabled() and any(
                t is not None and t.requires_grad for t in (x, gain, bias)
            ):
                result = _recorded_kernels(torch, self, xp, x, gain, bias, layout, need_stats)
            else:
                result = _on_numpy_kernels(
                    torch, "normalize", (x, gain, bias), layout, need_stats=need_stats
                )
            if result is not NotImplemented:
                return result
        if (
            layout.stats is None
            and not need_stats
            and not layout.correction
            and layout.center
            and layout.is_trailing(x.ndim)
        ):
            shape = tuple(x.shape[a] for a in layout.reduce_axes)
            # on x - x[first] (see _first_values): torch's CPU backward of layer norm folds
            # dx into x * a + b, which for a constant row of 1e5 in float32 is 100 % off
            shifted = x - _first_values(x, layout.reduce_axes)
            y, _, rstd = torch.native_layer_norm(shifted, shape, gain, bias, layout.eps)
            return NotImplemented if _overflowed(rstd) else Normalized(y, None, None)
        if (
            layout.center
            and not layout.correction
            and _batch_norm_layout(x, layout)
            and (layout.stats is None or not layout.stats.var.requires_grad)
        ):
            return _native_batch_norm(torch, x, gain, bias, layout, need_stats)
        if (
            layout.center
            and not layout.correction
            and layout.stats is None
            and _group_norm_layout(x, layout)
        ):
            return _native_group_norm(torch, x, gain, bias, layout, need_stats)
        return _fused(torch, xp, x, gain, bias, layout)

    def normalize_backward(self, xp, dy, x, gain, bias, layout):
        """aten's ``native_layer_norm_backward`` for the layer-norm layout, and
        ``native_batch_norm_backward`` for the batch-norm layout with fixed statistics."""
        torch = sys.modules["torch"]
        if self.is_concrete(x):
            result = _on_numpy_kernels(torch, "normalize_backward", (dy, x, gain, bias), layout)
            if result is not NotImplemented:
                return result
        if (
            layout.stats is not None
            and layout.center
            and not layout.correction
            and _batch_norm_layout(x, layout)
            and x.dtype in (torch.float32, torch.float64)
            and all(p is None or p.dtype == x.dtype for p in (gain, bias))
        ):
            return _native_batch_norm_backward(torch, dy, x, gain, bias, layout)
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
        if not self.is_concrete(x):
            return NotImplemented
        # Shifted as in the forward (torch's backward kernel cancels on large-mean rows).
        shifted = x - _first_values(x, layout.reduce_axes)
        var, mean = torch.var_mean(
            shifted.detach(), dim=layout.reduce_axes, correction=0, keepdim=True
        )
        rstd = torch.rsqrt(var + layout.eps)
        if _overflowed(rstd):
            return NotImplemented
        need_dgain = gain is not None
        dx, dgain, _ = torch.ops.aten.native_layer_norm_backward(
            dy, shifted, shape, mean, rstd, gain, None, [True, need_dgain, False]
        )
        # dbias is the plain sum of dy; aten only computes it next to a weight.
        # (torch's sum over dim=() would reduce everything: a 1-D x needs a copy.)
        leading = tuple(range(x.ndim - len(shape)))
        dbias = None
        if bias is not None:
            dbias = dy.sum(dim=leading) if leading else dy.clone()
        return Gradients(dx, dgain, dbias)

    def moments(self, xp, x, axes):
        """``(count, mean, M2)`` in the reference's two shifted passes, with one temporary.

        The reference allocates four ``x``-sized arrays; here the shifted copy
        is centered and squared in place (it is this function's own), which
        matters where each fresh allocation costs page faults. With autograd
        recording, the reference runs (in-place steps would break the graph).
        """
        torch = sys.modules["torch"]
        if torch.is_grad_enabled() and x.requires_grad:
            return NotImplemented
        work = x - _first_values(x, axes)
        offset = work.mean(dim=axes, keepdim=True)
        m2 = work.sub_(offset).square_().sum(dim=axes, keepdim=True)
        return math.prod(x.shape[a] for a in axes), offset + _first_values(x, axes), m2

    def recurrent(self, xp, xs, states0, layer_params, *, cell, nonlinearity, bidirectional,
                  batch_first, dropout):  # fmt: skip
        """torch's own recurrent kernels (``torch._VF``, what ``torch.nn.LSTM`` runs), on the CPU.

        normcore's params are views of torch's layout transposed (``W_x =
        weight_ih.T``), so they are transposed back; the summed bias ``b`` of
        the RNN and LSTM goes in as ``bias_ih`` with a zero ``bias_hh``. Only
        float32/float64 CPU tensors whose layers share one hidden size: CUDA
        (cuDNN) has not been run here, and torch's half-precision recurrent
        kernels do not accumulate in float32. Not the LSTM under ``torch.compile``,
        forward-mode AD or a ``torch.func`` transform (its CPU kernel supports
        none of them): normcore's loop runs instead.
        """
        torch = sys.modules["torch"]
        hidden = layer_params[0]["W_h"].shape[0]
        if (
            # torch 2.13's CPU LSTM kernel (aten.mkldnn_rnn_layer) does not compile
            # (aot_autograd fails on a None it saves, inductor on a None argument)
            # and has no forward-mode AD nor functorch rules: the loop runs there
            (cell == "lstm" and _transformed(torch))
            or xs.device.type != "cpu"
            or xs.dtype not in (torch.float32, torch.float64)
            or any(p["W_h"].shape[0] != hidden for p in layer_params)
        ):
            return NotImplemented
        weights = []
        gru = cell == "gru"  # the GRU keeps b_hn apart; the others' biases are summed in b
        for p in layer_params:
            biases = (p["b_x"], p["b_h"]) if gru else (p["b"], torch.zeros_like(p["b"]))
            weights += [p["W_x"].mT, p["W_h"].mT, *biases]
        batch = xs.shape[0 if batch_first else 1]
        zeros = xs.new_zeros((batch, hidden))
        parts = 2 if cell == "lstm" else 1

        def part(state, i):  # h (i = 0) or c of one layer's state; zeros for None
            piece = state if state is None or parts == 1 else state[i]
            return zeros if piece is None else piece

        hx = [torch.stack([part(s, i) for s in states0]) for i in range(parts)]
        directions = 2 if bidirectional else 1
        args = (weights, True, len(layer_params) // directions, dropout, dropout > 0,
                bidirectional, batch_first)  # fmt: skip
        if cell == "lstm":
            hs, h_n, c_n = torch._VF.lstm(xs, tuple(hx), *args)
            return hs, [(h_n[k], c_n[k]) for k in range(len(layer_params))]
        kernel = {"gru": torch._VF.gru, "rnn": getattr(torch._VF, f"rnn_{nonlinearity}")}[cell]
        hs, h_n = kernel(xs, hx[0], *args)
        return hs, [h_n[k] for k in range(len(layer_params))]

    def custom_gradient(self, forward, backward, inputs):
        """A ``torch.autograd.Function`` whose backward is ``backward``, when autograd records."""
        torch = sys.modules["torch"]
        if not torch.is_grad_enabled() or not any(
            t is not None and t.requires_grad for t in inputs
        ):
            return NotImplemented
        saved: list[Any] = []
        y = _custom_function(torch).apply(forward, backward, saved, *inputs)
        return y, saved[0]


def _transformed(torch) -> bool:
    """Whether torch.compile traces, forward-mode AD records or a torch.func transform runs."""
    return (
        torch.compiler.is_compiling()
        or torch.autograd.forward_ad._current_level >= 0
        or torch._C._functorch.peek_interpreter_stack() is not None
    )


@functools.cache
def _custom_function(torch):
    """The autograd function of :meth:`TorchAdapter.custom_gradient` (torch imported lazily)."""

    class CustomGradient(torch.autograd.Function):
        @staticmethod
        def forward(ctx, forward, backward, saved, *inputs):
            y, kept = forward(*inputs)
            ctx.backward_fn, ctx.kept = backward, kept
            saved.append(kept)
            return y

        @staticmethod
        @torch.autograd.function.once_differentiable
        def backward(ctx, dy):
            return (None, None, None, *ctx.backward_fn(dy, ctx.kept))

    return CustomGradient


adapter = TorchAdapter()

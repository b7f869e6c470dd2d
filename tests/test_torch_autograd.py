"""normcore on torch tensors: differentiable by autograd and equal to torch.nn.functional."""

from __future__ import annotations

import numpy as np
import pytest

import normcore

torch = pytest.importorskip("torch")


@pytest.mark.parametrize(
    ("shape", "axis"), [((3, 5), -1), ((2, 3, 4), (1, 2)), ((2, 3, 4), (2, 0))]
)
def test_gradcheck_and_gradgradcheck(path, torch_device, shape, axis):
    device = torch_device
    gen = torch.Generator().manual_seed(0)
    axes = axis if isinstance(axis, tuple) else (axis,)
    pshape = tuple(shape[a] for a in axes)
    x = torch.randn(shape, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    gain = torch.randn(pshape, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    bias = torch.randn(pshape, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, g, b: normcore.layer_norm(a, g, b, axis=axis), (x, gain, bias)
    )
    assert torch.autograd.gradgradcheck(
        lambda a, g, b: normcore.layer_norm(a, g, b, axis=axis), (x, gain, bias)
    )
    assert torch.autograd.gradcheck(lambda a, g: normcore.rms_norm(a, g, axis=axis), (x, gain))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("center", [True, False], ids=["layer", "rms"])
def test_autograd_equals_torch_functional(path, torch_device, dtype, center):
    device = torch_device
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(8, 16, generator=gen).to(device, dtype)
    g0 = torch.randn(16, generator=gen).to(device, dtype)
    b0 = torch.randn(16, generator=gen).to(device, dtype)
    dy = torch.randn(8, 16, generator=gen).to(device, dtype)
    results = []
    for impl in ("normcore", "torch"):
        x, g, b = (t.clone().requires_grad_() for t in (x0, g0, b0))
        if center:
            y = (
                normcore.layer_norm(x, g, b)
                if impl == "normcore"
                else torch.nn.functional.layer_norm(x, (16,), g, b)
            )
        else:
            b = None
            y = (
                normcore.rms_norm(x, g)
                if impl == "normcore"
                else torch.nn.functional.rms_norm(x, (16,), g, eps=1e-6)
            )
        y.backward(dy)
        results.append([y, x.grad, g.grad] + ([b.grad] if center else []))
        assert y.dtype == dtype and y.device == x0.device
    tol = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 5e-2}[dtype]
    for ours, theirs in zip(*results, strict=True):
        torch.testing.assert_close(ours.double(), theirs.double(), rtol=tol, atol=tol * 4)


def test_explicit_backward_equals_autograd_of_normcore(path):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(4, 3, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    gain = torch.randn(3, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(4, 3, 5, generator=gen, dtype=torch.float64)
    normcore.layer_norm(x, gain, axis=(1, 2)).backward(dy)
    grads = normcore.layer_norm_backward(dy, x.detach(), gain.detach(), axis=(1, 2))
    np.testing.assert_allclose(grads.dx.numpy(), x.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grads.dgain.numpy(), gain.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("center", [True, False], ids=["layer", "rms"])
def test_explicit_backward_is_differentiable(path, torch_device, center):
    device = torch_device
    """Gradient penalties differentiate dx: ``*_backward`` must stay on autograd's graph."""
    gen = torch.Generator().manual_seed(3)
    x, dy = (torch.randn(3, 5, generator=gen, dtype=torch.float64).to(device) for _ in range(2))
    gain = torch.randn(5, generator=gen, dtype=torch.float64).to(device)
    backward = normcore.layer_norm_backward if center else normcore.rms_norm_backward
    inputs = tuple(t.requires_grad_() for t in (dy, x, gain))
    assert torch.autograd.gradcheck(lambda d, a, g: tuple(backward(d, a, g)[:2]), inputs)

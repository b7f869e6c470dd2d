"""normcore.torch.GroupNorm against torch.nn.GroupNorm."""

from __future__ import annotations

import pytest
from _torch_support import assert_all_close, grads, randomize

import normcore

torch = pytest.importorskip("torch")

TOL = {torch.float32: 2e-5, torch.float64: 1e-10}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", [(4, 6), (3, 6, 5), (2, 6, 3, 2)])
def test_group_norm_equals_torch(path, dtype, affine, shape):
    theirs = torch.nn.GroupNorm(3, 6, affine=affine, dtype=dtype)
    randomize(theirs, 3)
    ours = normcore.torch.GroupNorm(3, 6, affine=affine, dtype=dtype)
    ours.load_state_dict(theirs.state_dict())
    assert list(ours.state_dict()) == list(theirs.state_dict())
    gen = torch.Generator().manual_seed(4)
    x0 = (torch.randn(shape, generator=gen) * 3 + 1).to(dtype)
    dy = torch.randn(shape, generator=gen).to(dtype)
    results = []
    for module in (ours, theirs):
        x = x0.clone().requires_grad_()
        y = module(x)
        y.backward(dy)
        results.append((y, x.grad, grads(module)))
    assert_all_close(results[0], results[1], TOL[dtype])


def test_group_norm_errors():
    with pytest.raises(ValueError, match=r"num_groups must be a positive divisor .* \(6\), got 4"):
        normcore.torch.GroupNorm(4, 6)
    with pytest.raises(ValueError, match=r"^input must have num_channels=6 values along axis 1"):
        normcore.torch.GroupNorm(3, 6, affine=False)(torch.randn(2, 3, 4))

"""What the tests of the ``normcore.torch`` drop-ins share: parameters, gradients, comparisons."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

__all__ = ["assert_all_close", "grads", "randomize"]


def randomize(module, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen).to(p))


def grads(module):
    return {name: p.grad for name, p in module.named_parameters()}


def assert_all_close(got, want, tol):
    assert type(got) is type(want)
    if isinstance(want, dict):
        assert list(got) == list(want)
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=tol, atol=tol, msg=key)
    elif isinstance(want, tuple | list):
        for g, w in zip(got, want, strict=True):
            assert_all_close(g, w, tol)
    else:
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)

"""What every normcore.torch drop-in shares: dtype moves, torch.compile, empty batches."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from _torch_support import assert_all_close, grads

import normcore

torch = pytest.importorskip("torch")


def test_to_converts_dtype():
    for module, x in [
        (normcore.torch.LSTM(3, 4, layer_norm=True), torch.randn(5, 2, 3)),
        (normcore.torch.BatchNorm1d(3), torch.randn(5, 3)),
        (normcore.torch.GroupNorm(1, 3), torch.randn(5, 3)),
    ]:
        module.to(torch.float64)
        assert all(p.dtype == torch.float64 for p in module.parameters())
        out = module(x.double())
        assert (out[0] if isinstance(out, tuple) else out).dtype == torch.float64


# Dynamo notes that it traces through array-api-compat's lru_cache'd type checks.
@pytest.mark.filterwarnings("ignore:Dynamo detected a call to a `functools.lru_cache`")
def test_torch_compile_matches_eager():
    torch._dynamo.reset()
    for make, shape in [
        (lambda: torch.nn.BatchNorm2d(3), (4, 3, 2, 2)),
        (lambda: torch.nn.GRU(3, 4), (3, 2, 3)),
    ]:
        theirs = make()
        ours = getattr(normcore.torch, type(theirs).__name__)(3, *([4] if len(shape) == 3 else []))
        ours.load_state_dict(theirs.state_dict())
        compiled = torch.compile(ours, backend="aot_eager")
        x = torch.randn(shape, requires_grad=True)
        x_ref = x.detach().clone().requires_grad_()
        y, y_ref = compiled(x), theirs(x_ref)
        y, y_ref = (y[0], y_ref[0]) if isinstance(y, tuple) else (y, y_ref)
        y.square().sum().backward()
        y_ref.square().sum().backward()
        torch.testing.assert_close(y, y_ref)
        torch.testing.assert_close(x.grad, x_ref.grad)
        assert_all_close(grads(ours), grads(theirs), 1e-5)
        assert_all_close(dict(ours.state_dict()), dict(theirs.state_dict()), 1e-6)


# A fresh process: the suite's own reference_path() blocks would otherwise put the
# (untraceable) ContextVar lookup back into every call.
_FULLGRAPH_SCRIPT = textwrap.dedent(
    """
    import warnings
    import torch
    import normcore

    warnings.filterwarnings("error", message="Dynamo detected a call to a `functools.lru_cache`")
    torch.manual_seed(0)
    nc = normcore.torch
    cases = [  # (reference, normcore module to compile, input shape)
        (torch.nn.LayerNorm(5), nc.LayerNorm(5), (4, 5)),
        (torch.nn.RMSNorm(5), nc.RMSNorm(5), (4, 5)),
        (torch.nn.GroupNorm(1, 3), nc.GroupNorm(1, 3), (4, 3, 5)),
        (torch.nn.BatchNorm2d(3, momentum=None), nc.BatchNorm2d(3, momentum=None), (4, 3, 2, 2)),
        (torch.nn.LSTM(3, 4), nc.LSTM(3, 4), (5, 2, 3)),
        (torch.nn.GRU(3, 4), nc.GRU(3, 4), (5, 2, 3)),
        (nc.LSTM(3, 4, layer_norm=True), nc.LSTM(3, 4, layer_norm=True), (5, 2, 3)),  # eager
    ]
    for theirs, ours, shape in cases:
        ours.load_state_dict(theirs.state_dict())
        compiled = torch.compile(ours, fullgraph=True, backend="aot_eager")
        for step in range(2):
            x = torch.randn(shape)
            y, y_ref = compiled(x), theirs(x)
            y, y_ref = (y[0], y_ref[0]) if isinstance(y, tuple) else (y, y_ref)
            torch.testing.assert_close(y, y_ref)
        for key, value in theirs.state_dict().items():
            torch.testing.assert_close(ours.state_dict()[key], value, msg=key)
        if hasattr(theirs, "num_features"):  # a NaN batch: kept out, on the device
            before = {k: v.clone() for k, v in ours.state_dict().items()}
            compiled(torch.full(shape, float("nan")))
            for key, value in before.items():
                torch.testing.assert_close(ours.state_dict()[key], value, msg=key)
    print("fullgraph ok")
    """
)


def test_modules_compile_with_fullgraph_and_match_torch_nn():
    """torch.compile(fullgraph=True): no graph break anywhere, BatchNorm training included."""
    done = subprocess.run(
        [sys.executable, "-c", _FULLGRAPH_SCRIPT], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "fullgraph ok" in done.stdout


@pytest.mark.parametrize(
    ("name", "args"),
    [("LayerNorm", (3,)), ("RMSNorm", (3,)), ("BatchNorm1d", (3,)), ("GroupNorm", (1, 3))],
)
def test_empty_batch_backpropagates_like_torch_nn(name, args):
    """An empty batch keeps the autograd graph: empty dx, zero parameter gradients."""
    grads = []
    for module in (getattr(normcore.torch, name)(*args), getattr(torch.nn, name)(*args)):
        x = torch.zeros(0, 3, requires_grad=True)
        y = module(x)
        y.sum().backward()
        assert y.shape == (0, 3)
        grads.append((x.grad, module.weight.grad))
    (dx, dweight), (dx_torch, dweight_torch) = grads
    assert dx.shape == dx_torch.shape
    torch.testing.assert_close(dweight, dweight_torch)

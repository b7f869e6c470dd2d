"""normcore.torch BatchNorm/GroupNorm/RNN/LSTM/GRU: checked against torch.nn's modules."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from _rnn_reference import reference

import normcore

torch = pytest.importorskip("torch")

CELLS = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}
TOL = {torch.float32: 2e-5, torch.float64: 1e-10}


@pytest.fixture(params=["fast", "reference"])
def path(request):
    with normcore.reference_path(request.param == "reference"):
        yield request.param


def _randomize(module, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen).to(p))


def _grads(module):
    return {name: p.grad for name, p in module.named_parameters()}


def _assert_all_close(got, want, tol):
    assert type(got) is type(want)
    if isinstance(want, dict):
        assert list(got) == list(want)
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=tol, atol=tol, msg=key)
    elif isinstance(want, tuple | list):
        for g, w in zip(got, want, strict=True):
            _assert_all_close(g, w, tol)
    else:
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)


# -- batch norm -----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize(
    ("name", "shape"),
    [("BatchNorm1d", (6, 3)), ("BatchNorm1d", (4, 3, 5)), ("BatchNorm2d", (4, 3, 2, 3))],
)
def test_batch_norm_train_and_eval_equal_torch(path, dtype, momentum, name, shape):
    theirs = getattr(torch.nn, name)(3, momentum=momentum, dtype=dtype)
    _randomize(theirs, 0)
    ours = getattr(normcore.torch, name)(3, momentum=momentum, dtype=dtype)
    ours.load_state_dict(theirs.state_dict())
    gen = torch.Generator().manual_seed(1)
    for step in range(3):
        x0 = (torch.randn(shape, generator=gen) * (1 + step) + step).to(dtype)
        dy = torch.randn(shape, generator=gen).to(dtype)
        results = []
        for module in (ours, theirs):
            module.zero_grad()
            x = x0.clone().requires_grad_()
            y = module.train()(x)
            y.backward(dy)
            results.append((y, x.grad, _grads(module)))
        _assert_all_close(results[0], results[1], TOL[dtype])
    assert list(ours.state_dict()) == list(theirs.state_dict())
    _assert_all_close(dict(ours.state_dict()), dict(theirs.state_dict()), TOL[dtype])
    assert int(ours.num_batches_tracked) == 3
    x0 = torch.randn(shape, generator=gen).to(dtype)
    results = []
    for module in (ours, theirs):
        module.zero_grad()
        x = x0.clone().requires_grad_()
        y = module.eval()(x)
        y.sum().backward()
        results.append((y, x.grad, _grads(module)))
    _assert_all_close(results[0], results[1], TOL[dtype])
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    ours(x0)  # eval mode: the running statistics stay
    _assert_all_close(dict(ours.state_dict()), before, 0)


@pytest.mark.parametrize(
    "kwargs", [{"affine": False}, {"track_running_stats": False}, {"bias": False}]
)
def test_batch_norm_options_equal_torch(kwargs):
    theirs = torch.nn.BatchNorm2d(3, dtype=torch.float64, **kwargs)
    ours = normcore.torch.BatchNorm2d(3, dtype=torch.float64, **kwargs)
    _randomize(theirs, 2)
    ours.load_state_dict(theirs.state_dict())
    assert list(ours.state_dict()) == list(theirs.state_dict())
    x = torch.randn(4, 3, 2, 2, dtype=torch.float64)
    for training in (True, False):
        torch.testing.assert_close(ours.train(training)(x), theirs.train(training)(x))


def test_batch_norm_loads_version_1_checkpoints_like_torch():
    """A state_dict from before num_batches_tracked existed loads, as into torch.nn."""
    trained = torch.nn.BatchNorm2d(3)
    trained(torch.randn(4, 3, 2, 2))
    old = trained.state_dict()
    del old["num_batches_tracked"]
    old._metadata = {"": {"version": 1}}
    results = []
    for module in (torch.nn.BatchNorm2d(3), normcore.torch.BatchNorm2d(3)):
        module.num_batches_tracked.fill_(5)
        assert str(module.load_state_dict(old)) == "<All keys matched successfully>"
        results.append(module)
    reference, ours = results
    assert int(ours.num_batches_tracked) == int(reference.num_batches_tracked) == 5
    torch.testing.assert_close(ours.running_mean, trained.running_mean)
    assert ours.state_dict()._metadata[""]["version"] == 2
    current = trained.state_dict()
    del current["num_batches_tracked"]  # version 2 without the count: missing, as in torch.nn
    with pytest.raises(RuntimeError, match="num_batches_tracked"):
        normcore.torch.BatchNorm2d(3).load_state_dict(current)


def test_batch_norm_running_statistics_stay_out_of_autograd_and_keep_identity():
    bn = normcore.torch.BatchNorm1d(3)
    running_var = bn.running_var
    bn(torch.randn(5, 3, requires_grad=True)).sum().backward()
    assert bn.running_var is running_var
    assert not any(b.requires_grad for b in bn.buffers())
    bn.reset_parameters()
    assert int(bn.num_batches_tracked) == 0 and torch.equal(bn.running_var, torch.ones(3))


@pytest.mark.parametrize(
    ("module", "x_shape", "error", "message"),
    [
        ("BatchNorm2d", (4, 3, 2), ValueError, r"^expected 4D input \(got 3D input\)"),
        ("BatchNorm1d", (4, 3, 2, 2), ValueError, r"^expected 2D or 3D input \(got 4D input\)"),
        ("BatchNorm1d", (4, 5), ValueError, r"^x must have num_features=3 values along axis 1"),
        ("BatchNorm1d", (1, 3), ValueError, r"^expected more than 1 value per channel"),
    ],
)
def test_batch_norm_bad_input_leaves_the_statistics_unchanged(module, x_shape, error, message):
    bn = getattr(normcore.torch, module)(3)
    bn(torch.randn(4, 3, 2, 2) if module == "BatchNorm2d" else torch.randn(4, 3))
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    with pytest.raises(error, match=message):
        bn(torch.randn(x_shape))
    _assert_all_close(dict(bn.state_dict()), before, 0)


def test_batch_norm_constructor_errors():
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\] or None, got 2"):
        normcore.torch.BatchNorm1d(3, momentum=2)
    with pytest.raises(ValueError, match=r"num_features must be >= 1, got 0"):
        normcore.torch.BatchNorm2d(0)


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: normcore.torch.LayerNorm("ab"), TypeError, r"normalized_shape must be a positive"),
        (lambda: normcore.torch.RMSNorm((3, 0)), ValueError, r"normalized_shape must contain"),
        (lambda: normcore.torch.LayerNorm(3, eps=-1.0), ValueError, r"eps must be a finite"),
        (
            lambda: normcore.torch.LayerNorm(3, elementwise_affine="no"),
            TypeError,
            r"elementwise_affine must be True or False, got str",
        ),
        (lambda: normcore.torch.LayerNorm(3, bias=1), TypeError, r"bias must be True or False"),
        (
            lambda: normcore.torch.BatchNorm1d(3, affine="no"),
            TypeError,
            r"affine must be True or False, got str",
        ),
        (
            lambda: normcore.torch.BatchNorm2d(3, track_running_stats=0),
            TypeError,
            r"track_running_stats must be True or False, got int",
        ),
        (lambda: normcore.torch.GroupNorm(2, 4, affine=1), TypeError, r"affine must be True or"),
    ],
)
def test_flag_and_shape_arguments_are_checked(make, error, message):
    with pytest.raises(error, match=message):
        make()


# -- group norm -----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", [(4, 6), (3, 6, 5), (2, 6, 3, 2)])
def test_group_norm_equals_torch(path, dtype, affine, shape):
    theirs = torch.nn.GroupNorm(3, 6, affine=affine, dtype=dtype)
    _randomize(theirs, 3)
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
        results.append((y, x.grad, _grads(module)))
    _assert_all_close(results[0], results[1], TOL[dtype])


def test_group_norm_errors():
    with pytest.raises(ValueError, match=r"num_groups must be a positive divisor .* \(6\), got 4"):
        normcore.torch.GroupNorm(4, 6)
    with pytest.raises(ValueError, match=r"^x must have num_channels=6 values along axis 1"):
        normcore.torch.GroupNorm(3, 6, affine=False)(torch.randn(2, 3, 4))


# -- recurrent ------------------------------------------------------------------------------
def _pair(cell, dtype, seed, **kwargs):
    theirs = getattr(torch.nn, CELLS[cell])(3, 4, dtype=dtype, **kwargs)
    _randomize(theirs, seed)
    ours = getattr(normcore.torch, CELLS[cell])(3, 4, dtype=dtype, **kwargs)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def _initial_state(cell, shape, dtype, gen):
    parts = [torch.randn(shape, generator=gen).to(dtype).requires_grad_() for _ in range(2)]
    return tuple(parts) if cell == "lstm" else parts[0]


def _leaves(state):
    return state if isinstance(state, tuple) else (state,)


def _loss(output, final, gen):
    finals = _leaves(final)
    total = (output * torch.randn(output.shape, generator=gen).to(output)).sum()
    return total + sum((f * torch.randn(f.shape, generator=gen).to(f)).sum() for f in finals)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", ["time-major", "batch-first", "unbatched", "no-hx"])
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_recurrent_equals_torch(path, dtype, layout, cell):
    batch_first = layout == "batch-first"
    ours, theirs = _pair(cell, dtype, 5, batch_first=batch_first)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    results = []
    for module in (ours, theirs):
        gen = torch.Generator().manual_seed(6)
        shape = {"unbatched": (5, 3), "batch-first": (2, 5, 3)}.get(layout, (5, 2, 3))
        x = torch.randn(shape, generator=gen).to(dtype).requires_grad_()
        hx_shape = (1, 4) if layout == "unbatched" else (1, 2, 4)
        hx = None if layout == "no-hx" else _initial_state(cell, hx_shape, dtype, gen)
        output, final = module(x, hx)
        assert isinstance(final, tuple) == (cell == "lstm")
        _loss(output, final, gen).backward()
        hx_grads = None if hx is None else tuple(h.grad for h in _leaves(hx))
        results.append((output, final, x.grad, hx_grads, _grads(module)))
    _assert_all_close(results[0], results[1], 10 * TOL[dtype])


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_recurrent_state_dicts_are_interchangeable(cell):
    ours, theirs = _pair(cell, torch.float32, 7)
    fresh = getattr(torch.nn, CELLS[cell])(3, 4)
    fresh.load_state_dict(ours.state_dict())  # strict: same keys and shapes
    for key, value in theirs.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value)


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_layer_norm_modules_equal_the_papers_equations(path, cell):
    module = getattr(normcore.torch, CELLS[cell])(3, 4, layer_norm=True, dtype=torch.float64)
    _randomize(module, 8)
    params = normcore.rnn_params_from_torch(module.state_dict(), cell, layer_norm=True)
    rng = np.random.default_rng(9)
    xs, dhs = rng.normal(size=(5, 2, 3)), rng.normal(size=(5, 2, 4))
    state0 = tuple(rng.normal(size=(2, 4)) for _ in range(2 if cell == "lstm" else 1))
    dfinal = tuple(np.zeros((2, 4)) for _ in state0)
    want_hs, want_final, want_dxs, _, _ = reference(
        cell, True, xs, state0, {k: v.numpy() for k, v in params.items()}, dhs, dfinal
    )
    x = torch.tensor(xs, requires_grad=True)
    hx = tuple(torch.tensor(s)[None] for s in state0)
    output, final = module(x, hx if cell == "lstm" else hx[0])
    output.backward(torch.tensor(dhs))
    np.testing.assert_allclose(output.detach().numpy(), want_hs, rtol=1e-10, atol=1e-10)
    for got, want in zip(_leaves(final), want_final, strict=True):
        np.testing.assert_allclose(got[0].detach().numpy(), want, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(x.grad.numpy(), want_dxs, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_layer_norm_modules_pass_gradcheck(cell):
    module = getattr(normcore.torch, CELLS[cell])(2, 3, layer_norm=True, dtype=torch.float64)
    _randomize(module, 10)
    names = [n for n, _ in module.named_parameters()]
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(3, 2, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(1, 2, 3, generator=gen, dtype=torch.float64, requires_grad=True)

    def run(x, h0, *values):
        hx = (h0, torch.tanh(h0)) if cell == "lstm" else h0
        output, final = torch.func.functional_call(
            module, dict(zip(names, values, strict=True)), (x, hx)
        )
        return output, *_leaves(final)

    values = [p.detach().clone().requires_grad_() for p in module.parameters()]
    assert torch.autograd.gradcheck(run, (x, h0, *values), fast_mode=True)


def test_normcore_objects_and_modules_share_their_state():
    obj = normcore.LSTM(3, 4, like=torch, dtype="float64", seed=3)
    module = normcore.torch.LSTM(3, 4, layer_norm=True, dtype=torch.float64)
    module.load_state_dict(obj.to_torch_state_dict())
    xs = torch.randn(5, 2, 3, dtype=torch.float64)
    hs, (h, c) = obj(xs)
    output, (h_n, c_n) = module(xs)
    torch.testing.assert_close(output, hs, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close((h_n[0], c_n[0]), (h, c), rtol=1e-12, atol=1e-12)
    _randomize(module, 12)
    obj.load_torch_state_dict(module.state_dict())
    torch.testing.assert_close(obj(xs)[0], module(xs)[0], rtol=1e-12, atol=1e-12)
    plain = normcore.GRU(3, 4, layer_norm=False, like=torch)
    plain.load_torch_state_dict(torch.nn.GRU(3, 4).state_dict())  # torch.nn keys


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_layers": 2}, r"supports num_layers=1 only .* got num_layers=2"),
        ({"bidirectional": True}, r"supports bidirectional=False only"),
        ({"bias": False}, r"supports bias=True only"),
        ({"dropout": 0.5}, r"supports dropout=0.0 only"),
        ({"proj_size": 2}, r"supports proj_size=0 only \(no projection\), got 2"),
    ],
)
def test_unsupported_configurations_are_value_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        normcore.torch.LSTM(3, 4, **kwargs)
    with pytest.raises(ValueError, match=r"supports nonlinearity='tanh' only, got 'relu'"):
        normcore.torch.RNN(3, 4, nonlinearity="relu")
    with pytest.raises(TypeError, match=r"^nonlinearity must be a str, one of .* got int"):
        normcore.torch.RNN(3, 4, nonlinearity=1)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"bias": 1}, TypeError, r"^bias must be True or False, got int"),
        ({"bidirectional": 0}, TypeError, r"^bidirectional must be True or False, got int"),
        ({"batch_first": "yes"}, TypeError, r"^batch_first must be True or False, got str"),
        ({"layer_norm": 1}, TypeError, r"^layer_norm must be True or False, got int"),
        ({"num_layers": 1.0}, TypeError, r"^num_layers must be an int, got float"),
        ({"dropout": -0.5}, ValueError, r"^dropout must be in \[0, 1\], got -0.5"),
        ({"dropout": "0"}, TypeError, r"^dropout must be a real number, got str"),
    ],
)
def test_recurrent_argument_types_are_checked(kwargs, error, message):
    with pytest.raises(error, match=message):
        normcore.torch.GRU(3, 4, **kwargs)


@pytest.mark.parametrize(
    ("cell", "x_shape", "hx", "error", "message"),
    [
        ("gru", (5, 2, 3, 1), None, ValueError, r"^GRU: expected input to be 2D or 3D, got 4D"),
        ("gru", (5, 2, 3), torch.zeros(2, 2, 4), ValueError, r"^hx must have shape \(1, batch"),
        ("lstm", (5, 2, 3), torch.zeros(1, 2, 4), TypeError, r"^hx for LSTM must be a tuple"),
        ("rnn", (5, 2, 4), None, ValueError, r"^RNN: input.size\(-1\) must be input_size=3, got 4"),
        (
            "lstm",
            (5, 2, 3),
            (torch.zeros(1, 2, 4),) * 3,
            TypeError,
            r"^hx for LSTM must be a tuple \(h_0, c_0\), got a tuple of length 3$",
        ),
        ("rnn", (5, 3), torch.zeros(1, 2, 4), ValueError, r"^hx must have shape \(1, hidden"),
    ],
)
def test_recurrent_bad_input(cell, x_shape, hx, error, message):
    module = getattr(normcore.torch, CELLS[cell])(3, 4)
    with pytest.raises(error, match=message):
        module(torch.zeros(x_shape), hx)


def test_recurrent_input_dtype_must_match_the_parameters():
    with pytest.raises(
        TypeError, match=r"^GRU: input must have the parameters' dtype torch.float32"
    ):
        normcore.torch.GRU(3, 4)(torch.zeros(5, 2, 3, dtype=torch.float64))


def test_lstm_takes_torch_nn_constructor_arguments_positionally():
    """input, hidden, num_layers, bias, batch_first, dropout, bidirectional, proj_size."""
    args = (3, 4, 1, True, True, 0.0, False, 0)
    ours, theirs = normcore.torch.LSTM(*args), torch.nn.LSTM(*args)
    assert (ours.batch_first, ours.proj_size) == (theirs.batch_first, theirs.proj_size) == (True, 0)
    ours.load_state_dict(theirs.state_dict())
    ours.flatten_parameters()  # a no-op kept for code written for torch.nn's cuDNN RNNs
    x = torch.randn(2, 5, 3)
    torch.testing.assert_close(ours(x)[0], theirs(x)[0])
    with pytest.raises(TypeError, match=r"^proj_size must be an int, got float"):
        normcore.torch.LSTM(3, 4, proj_size=0.0)


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
        _assert_all_close(_grads(ours), _grads(theirs), 1e-5)
        _assert_all_close(dict(ours.state_dict()), dict(theirs.state_dict()), 1e-6)


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

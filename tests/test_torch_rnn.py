"""normcore.torch.RNN/LSTM/GRU against torch.nn's and against the paper's equations."""

from __future__ import annotations

import collections

import numpy as np
import pytest
from _rnn_reference import reference
from _torch_support import assert_all_close, grads, randomize

import normcore

torch = pytest.importorskip("torch")

CELLS = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}
TOL = {torch.float32: 2e-5, torch.float64: 1e-10}


def _pair(cell, dtype, seed, **kwargs):
    theirs = getattr(torch.nn, CELLS[cell])(3, 4, dtype=dtype, **kwargs)
    randomize(theirs, seed)
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
        results.append((output, final, x.grad, hx_grads, grads(module)))
    assert_all_close(results[0], results[1], 10 * TOL[dtype])


class _CountBytes(torch.utils._python_dispatch.TorchDispatchMode):
    """Count the bytes of every tensor that any aten op returns, autograd's included."""

    def __init__(self):
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.bytes += t.numel() * t.element_size()
        return out


@pytest.mark.parametrize("layer_norm", [False, True], ids=["plain", "ln"])
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_autograd_cost_per_step_does_not_grow_with_the_sequence(cell, layer_norm):
    # Profiler-free: the bytes that forward + backward produce, per step. Indexing
    # u[t] of the (T, B, G*H) input terms at every step made each step's backward
    # produce a zero gradient of the whole array (measured before the fix: 2.2-2.6x
    # more bytes per step at T=80 than at T=20, i.e. quadratic training).
    def bytes_per_step(steps):
        gen = torch.Generator().manual_seed(0)
        params = normcore.rnn_params(cell, 3, 4, layer_norm=layer_norm, dtype="float64")
        leaves = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
        xs = torch.randn(steps, 2, 3, dtype=torch.float64, generator=gen, requires_grad=True)
        mask = torch.ones(steps, 2, dtype=torch.bool)
        mask[steps // 2 :, 1] = False  # a shorter second sequence: the masked path too
        with _CountBytes() as counter:
            hs, _ = normcore.rnn(xs, None, leaves, cell=cell, layer_norm=layer_norm, mask=mask)
            hs.sum().backward()
        return counter.bytes / steps

    short, long = bytes_per_step(20), bytes_per_step(80)
    assert long <= 1.02 * short, (short, long)


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
    randomize(module, 8)
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
    randomize(module, 10)
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
    randomize(module, 12)
    obj.load_torch_state_dict(module.state_dict())
    torch.testing.assert_close(obj(xs)[0], module(xs)[0], rtol=1e-12, atol=1e-12)
    plain = normcore.GRU(3, 4, layer_norm=False, like=torch)
    plain.load_torch_state_dict(torch.nn.GRU(3, 4).state_dict())  # torch.nn keys


def test_unsupported_configurations_are_value_errors():
    with pytest.raises(ValueError, match=r"supports proj_size=0 only \(no projection\), got 2"):
        normcore.torch.LSTM(3, 4, proj_size=2)
    with pytest.raises(ValueError, match=r"^nonlinearity must be one of \('tanh', 'relu'\)"):
        normcore.torch.RNN(3, 4, nonlinearity="gelu")
    with pytest.raises(TypeError, match=r"^nonlinearity must be a str, one of .* got int"):
        normcore.torch.RNN(3, 4, nonlinearity=1)


OPTIONS = {
    "2-layers": {"num_layers": 2},
    "bidirectional": {"bidirectional": True},
    "2-layers-bidirectional": {"num_layers": 2, "bidirectional": True},
    "no-bias": {"bias": False},
    "3-layers-bidirectional-no-bias-batch-first": {
        "num_layers": 3, "bidirectional": True, "bias": False, "batch_first": True,
    },
}  # fmt: skip


@pytest.mark.parametrize("layout", ["hx", "no-hx", "unbatched"])
@pytest.mark.parametrize("options", [*OPTIONS, "relu", "relu-2-layers-bidirectional"])
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_layers_and_directions_equal_torch(path, cell, options, layout):
    if options.startswith("relu"):
        if cell != "rnn":
            pytest.skip("nonlinearity is torch.nn.RNN's option only")
        kwargs = {"nonlinearity": "relu", **OPTIONS.get(options[len("relu-") :], {})}
    else:
        kwargs = OPTIONS[options]
    ours, theirs = _pair(cell, torch.float64, 12, **kwargs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    count = kwargs.get("num_layers", 1) * (2 if kwargs.get("bidirectional") else 1)
    results = []
    for module in (ours, theirs):
        gen = torch.Generator().manual_seed(13)
        shape = (5, 3) if layout == "unbatched" else (2, 5, 3) if module.batch_first else (5, 2, 3)
        x = torch.randn(shape, generator=gen, dtype=torch.float64, requires_grad=True)
        hx_shape = (count, 4) if layout == "unbatched" else (count, 2, 4)
        hx = None if layout == "no-hx" else _initial_state(cell, hx_shape, torch.float64, gen)
        output, final = module(x, hx)
        _loss(output, final, gen).backward()
        hx_grads = None if hx is None else tuple(h.grad for h in _leaves(hx))
        results.append((output, final, x.grad, hx_grads, grads(module)))
    assert_all_close(results[0], results[1], 1e-12)


def test_dropout_between_layers_draws_as_torch_does():
    # torch.nn draws one dropout mask per layer output but the last, in training
    # mode only; with the same seed the masks, hence outputs, are the same.
    ours, theirs = _pair("gru", torch.float64, 14, num_layers=3, dropout=0.5)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    for training in (True, False):
        outs = []
        for module in (ours, theirs):
            module.train(training)
            torch.manual_seed(15)
            outs.append(module(x))
        assert_all_close(outs[0], outs[1], 1e-12)
    ours.train()
    torch.manual_seed(16)
    assert not torch.equal(ours(x)[0], ours.eval()(x)[0])


def test_layer_norm_keys_of_every_layer_and_direction():
    module = normcore.torch.LSTM(3, 4, num_layers=2, bidirectional=True, layer_norm=True)
    keys = list(module.state_dict())
    assert keys[:6] == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0",
                        "ln_gain_x", "ln_bias_x"]  # fmt: skip
    assert "ln_gain_c_l0_reverse" in keys and "ln_bias_h_l1" in keys
    assert module.weight_ih_l1.shape == (16, 8)  # layer 1 takes both directions' outputs


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
        (
            "gru",
            (5, 2, 3),
            torch.zeros(2, 2, 4),
            ValueError,
            r"^hx must have shape \(D \* num_layers, batch, hidden_size\) with D \* num_layers = 1",
        ),
        ("lstm", (5, 2, 3), torch.zeros(1, 2, 4), TypeError, r"^hx for LSTM must be a tuple"),
        ("rnn", (5, 2, 4), None, ValueError, r"^RNN: input.size\(-1\) must be input_size=3, got 4"),
        (
            "lstm",
            (5, 2, 3),
            (torch.zeros(1, 2, 4),) * 3,
            TypeError,
            r"^hx for LSTM must be a tuple \(h_0, c_0\), got a tuple of length 3$",
        ),
        ("rnn", (5, 3), torch.zeros(1, 2, 4), ValueError, r"^hx must have shape \(D \* num"),
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


@pytest.mark.parametrize(
    ("attribute", "replacement", "error", "message"),
    [
        ("weight_hh_l1", lambda p: torch.zeros(16, 5), ValueError,
         r"^LSTM: weight_hh_l1 must have shape \(16, 4\) .* got \(16, 5\)"),
        ("bias_ih_l0", lambda p: p.detach().double(), TypeError,
         r"^LSTM: bias_ih_l0 must have weight_ih_l0's dtype torch.float32, got torch.float64"),
        ("weight_ih_l1", lambda p: p.detach().to("meta"), ValueError,
         r"^LSTM: weight_ih_l1 is on device meta but weight_ih_l0 is on cpu"),
    ],
)  # fmt: skip
def test_a_replaced_parameter_is_named_in_torch_terms(attribute, replacement, error, message):
    """Not as normcore's internal params['W_x'] with the transposed shape."""
    module = normcore.torch.LSTM(3, 4, num_layers=2)
    setattr(module, attribute, torch.nn.Parameter(replacement(getattr(module, attribute))))
    with pytest.raises(error, match=message):
        module(torch.zeros(5, 2, 3))


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


class _CountOps(torch.utils._python_dispatch.TorchDispatchMode):
    """Count every aten op by name."""

    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


# What normcore.torch adds around torch's kernel: its params as views of torch's
# layout and back, the summed bias with a zero bias_hh, the stacked initial state.
_SETUP_OPS = {"aten.permute", "aten.transpose", "aten.add", "aten.zeros_like", "aten.new_zeros",
              "aten.stack", "aten.select", "aten.zeros"}  # fmt: skip


@pytest.mark.parametrize("options", ["1-layer", "2-layers-bidirectional"])
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_plain_modules_run_torchs_own_kernel(cell, options):
    # On the fast path a plain module runs the ops torch.nn's runs, plus setup ops
    # whose number does not depend on the sequence's length; on the reference
    # path (normcore's loop) the op counts differ at every step.
    kwargs = OPTIONS.get(options, {})
    ours, theirs = _pair(cell, torch.float32, 20, **kwargs)
    x = torch.randn(20, 2, 3)
    counts = []
    for module in (ours, theirs):
        with _CountOps() as counter:
            module(x)
        counts.append(counter.ops)
    extra, missing = counts[0] - counts[1], counts[1] - counts[0]
    assert set(extra) | set(missing) <= _SETUP_OPS, (extra, missing)
    assert extra.total() <= 8 + 8 * len(ours._keys), extra


def _packed(lengths, size, gen, dtype):
    seqs = [torch.randn(n, size, generator=gen, dtype=dtype, requires_grad=True) for n in lengths]
    return seqs, torch.nn.utils.rnn.pack_sequence(seqs, enforce_sorted=False)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["one-way", "bidirectional"])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_packed_sequences_equal_torch(path, cell, batch_first, bidirectional):
    # Uneven lengths, not sorted: the output is packed like the input, the final
    # state is each sequence's own in the caller's order, gradients reach each
    # sequence and hx; two layers and dropout=0 exercise the mask in every layer,
    # and the reverse direction starts at each sequence's own last step.
    ours, theirs = _pair(cell, torch.float64, 21, num_layers=2, batch_first=batch_first,
                         bidirectional=bidirectional)  # fmt: skip
    results = []
    for module in (ours, theirs):
        gen = torch.Generator().manual_seed(22)
        seqs, packed = _packed([3, 6, 1, 4], 3, gen, torch.float64)
        hx = _initial_state(cell, (2 * (1 + bidirectional), 4, 4), torch.float64, gen)
        output, final = module(packed, hx)
        assert isinstance(output, torch.nn.utils.rnn.PackedSequence)
        assert torch.equal(output.batch_sizes, packed.batch_sizes)
        assert torch.equal(output.sorted_indices, packed.sorted_indices)
        loss = (output.data * torch.randn(output.data.shape, generator=gen).double()).sum()
        loss = loss + sum((f * torch.randn(f.shape, generator=gen).double()).sum()
                          for f in _leaves(final))  # fmt: skip
        loss.backward()
        results.append((output.data, final, [s.grad for s in seqs],
                        [h.grad for h in _leaves(hx)], grads(module)))  # fmt: skip
    assert_all_close(results[0], results[1], 1e-12)


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_packed_layer_norm_sequences_equal_each_sequence_alone(path, cell):
    # No torch.nn module to compare with: a packed batch must give each sequence
    # what it gives when run alone (the padding never reaches a real step).
    module = getattr(normcore.torch, CELLS[cell])(3, 4, layer_norm=True, dtype=torch.float64)
    randomize(module, 23)
    gen = torch.Generator().manual_seed(24)
    seqs, packed = _packed([2, 5, 3], 3, gen, torch.float64)
    output, final = module(packed)
    padded, lengths = torch.nn.utils.rnn.pad_packed_sequence(output)
    for b, seq in enumerate(seqs):
        alone, alone_final = module(seq[:, None])
        n = int(lengths[b])
        torch.testing.assert_close(padded[:n, b], alone[:, 0], rtol=1e-12, atol=1e-12)
        for f, g in zip(_leaves(final), _leaves(alone_final), strict=True):
            torch.testing.assert_close(f[:, b], g[:, 0], rtol=1e-12, atol=1e-12)


def test_forward_mode_ad_of_the_lstm_equals_finite_differences():
    # torch's float32 CPU LSTM kernel has no forward-mode AD: normcore's loop runs
    # there. Expected: a central difference of torch.nn.LSTM in float64.
    ours, theirs = _pair("lstm", torch.float32, 25)
    gen = torch.Generator().manual_seed(26)
    x, v = torch.randn(5, 2, 3, generator=gen), torch.randn(5, 2, 3, generator=gen)
    with torch.autograd.forward_ad.dual_level():
        output, _ = ours(torch.autograd.forward_ad.make_dual(x, v))
        tangent = torch.autograd.forward_ad.unpack_dual(output).tangent
    theirs.double()
    step = 1e-6
    plus, minus = (theirs(x.double() + s * v.double())[0] for s in (step, -step))
    torch.testing.assert_close(tangent.double(), (plus - minus) / (2 * step), rtol=1e-4, atol=1e-5)


def test_stacked_directions_of_different_hidden_sizes_equal_torch():
    # normcore's stacked call allows each direction its own hidden size (the
    # torch.nn modules do not): layer 1 takes 4 + 5 features. Expected: one
    # torch.nn.GRU per layer and direction, the reverse one on the flipped sequence.
    from normcore._functional.rnn import stacked_rnn

    sizes = [(3, 4), (3, 5), (9, 4), (9, 4)]
    modules = [torch.nn.GRU(i, h, dtype=torch.float64) for i, h in sizes]
    for k, m in enumerate(modules):
        randomize(m, 30 + k)
    params = [normcore.rnn_params_from_torch(m.state_dict(), "gru") for m in modules]
    x = torch.randn(5, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(27))
    hs, _ = stacked_rnn(x, [None] * 4, params, cell="gru", layer_norm=False, eps=1e-5,
                             bidirectional=True)  # fmt: skip
    layer_input = x
    for layer in range(2):
        forward, reverse = modules[2 * layer], modules[2 * layer + 1]
        backward_out = reverse(layer_input.flip(0))[0].flip(0)
        layer_input = torch.cat([forward(layer_input)[0], backward_out], dim=-1)
    torch.testing.assert_close(hs, layer_input, rtol=1e-12, atol=1e-12)


def test_stacked_calls_check_their_lists():
    from normcore._functional.rnn import stacked_rnn

    params = normcore.rnn_params("gru", 3, 4, layer_norm=False, like=torch.zeros(1), seed=0)
    x = torch.randn(5, 2, 3)
    kwargs = {"cell": "gru", "layer_norm": False, "eps": 1e-5}
    with pytest.raises(ValueError, match=r"positive multiple of 2 .* got 3 and 3"):
        stacked_rnn(x, [None] * 3, [params] * 3, bidirectional=True, **kwargs)
    with pytest.raises(ValueError, match=r"got 1 and 2"):
        stacked_rnn(x, [None] * 2, [params], bidirectional=False, **kwargs)
    with pytest.raises(ValueError, match=r"dropout"):
        stacked_rnn(x, [None], [params], bidirectional=False, dropout=2.0, **kwargs)

"""normcore.rnn / rnn_backward / rnn_params on every backend, against PyTorch and math."""

from __future__ import annotations

import threading
import tracemalloc

import numpy as np
import pytest
from _rnn_reference import reference
from _support import assert_close, assert_like, finite_difference
from normcore.backends import _numpy_kernels

import normcore
from normcore._plumbing import config

CELLS = ("rnn", "lstm", "gru")
T, B, I, H = 4, 3, 5, 4  # noqa: E741  (time, batch, input, hidden as in the docs)


def _random_params(rng, cell, layer_norm, inputs=I, hidden=H):
    """Random values (gains around 1) in normcore's documented layout and key set."""
    shapes = {
        k: v.shape
        for k, v in normcore.rnn_params(
            cell, inputs, hidden, layer_norm=layer_norm, dtype="float64"
        ).items()
    }
    return {
        k: (1.0 if k.startswith("gain") else 0.0) + 0.5 * rng.normal(size=s)
        for k, s in shapes.items()
    }


def _state(rng, cell, batch=B, hidden=H):
    n = 2 if cell == "lstm" else 1
    return tuple(0.5 * rng.normal(size=(batch, hidden)) for _ in range(n))


def _public(state):
    return state if len(state) == 2 else state[0]


def _case(backend, dtype, rng, cell, layer_norm, steps=T):
    """Data rounded to ``dtype`` (float64 copies for the reference) and backend arrays."""

    def rounded(a):
        return backend.to_numpy(backend.asarray(a, dtype))

    np_data = {
        "xs": rounded(rng.normal(size=(steps, B, I))),
        "state0": tuple(rounded(s) for s in _state(rng, cell)),
        "params": {k: rounded(v) for k, v in _random_params(rng, cell, layer_norm).items()},
        "dhs": rounded(rng.normal(size=(steps, B, H))),
        "dfinal": tuple(rounded(s) for s in _state(rng, cell)),
    }
    arrays = {
        "xs": backend.asarray(np_data["xs"], dtype),
        "state0": _public(tuple(backend.asarray(s, dtype) for s in np_data["state0"])),
        "params": {k: backend.asarray(v, dtype) for k, v in np_data["params"].items()},
        "dhs": backend.asarray(np_data["dhs"], dtype),
        "dfinal": _public(tuple(backend.asarray(s, dtype) for s in np_data["dfinal"])),
    }
    return np_data, arrays


def _as_tuple(state):
    return state if isinstance(state, tuple) else (state,)


@pytest.mark.parametrize("layer_norm", [False, True], ids=["plain", "ln"])
@pytest.mark.parametrize("cell", CELLS)
def test_forward_and_gradients_equal_torch(backend, dtype, rng, cell, layer_norm):
    data, a = _case(backend, dtype, rng, cell, layer_norm)
    hs, final = normcore.rnn(a["xs"], a["state0"], a["params"], cell=cell, layer_norm=layer_norm)
    grads = normcore.rnn_backward(
        a["dhs"], a["xs"], a["state0"], a["params"], cell=cell, layer_norm=layer_norm,
        dfinal_state=a["dfinal"],
    )  # fmt: skip
    ref_hs, ref_final, ref_dxs, ref_dstate0, ref_dparams = reference(
        cell, layer_norm, data["xs"], data["state0"], data["params"], data["dhs"], data["dfinal"]
    )
    # errors of low-precision steps compound over time and through the gradients
    scale = 1.0 if dtype == "float64" else 4.0 * T
    assert_like(hs, a["xs"], (T, B, H))
    assert_close(backend, hs, ref_hs, dtype, scale)
    for got, want in zip(_as_tuple(final), ref_final, strict=True):
        assert_like(got, a["xs"], (B, H))
        assert_close(backend, got, want, dtype, scale)
    assert_like(grads.dxs, a["xs"])
    assert_close(backend, grads.dxs, ref_dxs, dtype, 4 * scale)
    for got, want in zip(_as_tuple(grads.dstate0), ref_dstate0, strict=True):
        assert_close(backend, got, want, dtype, 4 * scale)
    assert list(grads.dparams) == list(a["params"])
    for name, want in ref_dparams.items():
        assert_like(grads.dparams[name], a["params"][name])
        # parameter gradients sum over T * B terms
        assert_close(backend, grads.dparams[name], want, dtype, 4 * scale * T * B)


@pytest.mark.parametrize("layer_norm", [False, True], ids=["plain", "ln"])
@pytest.mark.parametrize("cell", [*CELLS, "rnn-relu"])
def test_gradients_equal_finite_differences(rng, cell, layer_norm):
    extra = {"nonlinearity": "relu"} if cell == "rnn-relu" else {}
    cell = cell.removesuffix("-relu")
    steps, batch, inputs, hidden = 3, 2, 3, 3
    xs = rng.normal(size=(steps, batch, inputs))
    state0 = _state(rng, cell, batch, hidden)
    params = _random_params(rng, cell, layer_norm, inputs, hidden)
    dhs = rng.normal(size=(steps, batch, hidden))
    dfinal = _state(rng, cell, batch, hidden)

    def loss(x, s0, p):
        hs, final = normcore.rnn(x, _public(s0), p, cell=cell, layer_norm=layer_norm, **extra)
        total = np.sum(hs * dhs)
        return total + sum(np.sum(f * d) for f, d in zip(_as_tuple(final), dfinal, strict=True))

    grads = normcore.rnn_backward(
        dhs, xs, _public(state0), params, cell=cell, layer_norm=layer_norm,
        dfinal_state=_public(dfinal), **extra,
    )  # fmt: skip
    if extra:  # relu: some units are off, so the test sees both branches
        hs = normcore.rnn(xs, state0[0], params, cell=cell, layer_norm=layer_norm, **extra)[0]
        assert 0 < np.count_nonzero(hs) < hs.size
    one = np.ones(())
    fd = finite_difference(lambda x: loss(x, state0, params), xs.copy(), one)
    np.testing.assert_allclose(grads.dxs, fd, rtol=1e-6, atol=1e-7)
    for k, part in enumerate(state0):

        def vary_state(s, k=k):
            return loss(xs, tuple(s if j == k else p for j, p in enumerate(state0)), params)

        fd = finite_difference(vary_state, part.copy(), one)
        np.testing.assert_allclose(_as_tuple(grads.dstate0)[k], fd, rtol=1e-6, atol=1e-7)
    for name, value in params.items():
        fd = finite_difference(lambda v, name=name: loss(xs, state0, {**params, name: v}),
                               value.copy(), one)  # fmt: skip
        np.testing.assert_allclose(grads.dparams[name], fd, rtol=1e-6, atol=1e-7, err_msg=name)


@pytest.mark.parametrize("layer_norm", [False, True], ids=["plain", "ln"])
@pytest.mark.parametrize("cell", CELLS)
def test_masked_batch_equals_each_sequence_alone(backend, rng, cell, layer_norm):
    lengths = [5, 2, 0, 3]
    steps, batch = max(lengths), len(lengths)
    mask_np = np.arange(steps)[:, None] < np.array(lengths)[None, :]
    xs_np = rng.normal(size=(steps, batch, I))
    # Padding may hold anything, NaN and inf included: it must not reach any result.
    padding = np.where(rng.random(size=xs_np.shape) < 0.5, np.nan, -np.inf)
    xs_np = np.where(mask_np[..., None], xs_np, padding)
    state_np = _state(rng, cell, batch)
    params_np = _random_params(rng, cell, layer_norm)
    dhs_np = rng.normal(size=(steps, batch, H))  # nonzero on padded steps: must be ignored
    dfinal_np = _state(rng, cell, batch)

    f64 = lambda a: backend.asarray(a, "float64")  # noqa: E731
    params = {k: f64(v) for k, v in params_np.items()}
    mask = backend.xp.asarray(f64(mask_np) > 0.5)
    kwargs = {"cell": cell, "layer_norm": layer_norm}
    state0 = _public(tuple(f64(s) for s in state_np))
    dfinal = _public(tuple(f64(s) for s in dfinal_np))
    hs, final = normcore.rnn(f64(xs_np), state0, params, mask=mask, **kwargs)
    grads = normcore.rnn_backward(
        f64(dhs_np), f64(xs_np), state0, params, mask=mask, dfinal_state=dfinal, **kwargs
    )
    hs, dxs = backend.to_numpy(hs), backend.to_numpy(grads.dxs)
    summed = {k: np.zeros_like(v) for k, v in params_np.items()}
    for b, length in enumerate(lengths):
        alone_state = _public(tuple(f64(s[b : b + 1]) for s in state_np))
        alone_dfinal = _public(tuple(f64(s[b : b + 1]) for s in dfinal_np))
        x_alone = f64(xs_np[:length, b : b + 1])
        hs_alone, final_alone = normcore.rnn(x_alone, alone_state, params, **kwargs)
        g_alone = normcore.rnn_backward(
            f64(dhs_np[:length, b : b + 1]), x_alone, alone_state, params,
            dfinal_state=alone_dfinal, **kwargs,
        )  # fmt: skip
        np.testing.assert_allclose(hs[:length, b], backend.to_numpy(hs_alone)[:, 0], atol=1e-12)
        assert np.all(hs[length:, b] == 0)
        for got, want in zip(_as_tuple(final), _as_tuple(final_alone), strict=True):
            np.testing.assert_allclose(backend.to_numpy(got)[b], backend.to_numpy(want)[0],
                                       atol=1e-12)  # fmt: skip
        np.testing.assert_allclose(dxs[:length, b], backend.to_numpy(g_alone.dxs)[:, 0],
                                   atol=1e-12)  # fmt: skip
        assert np.all(dxs[length:, b] == 0), "gradients through padded steps must be zero"
        for got, want in zip(_as_tuple(grads.dstate0), _as_tuple(g_alone.dstate0), strict=True):
            np.testing.assert_allclose(backend.to_numpy(got)[b], backend.to_numpy(want)[0],
                                       atol=1e-12)  # fmt: skip
        for k in summed:
            summed[k] += backend.to_numpy(g_alone.dparams[k])
    for k, want in summed.items():
        np.testing.assert_allclose(backend.to_numpy(grads.dparams[k]), want, atol=1e-11)


@pytest.mark.parametrize("cell", CELLS)
def test_batch_first_is_the_transposed_layout(backend, rng, cell):
    _data, a = _case(backend, "float64", rng, cell, True)
    mask_np = np.ones((T, B), bool)
    mask_np[2:, 1] = False
    xp = backend.xp
    mask = xp.asarray(backend.asarray(mask_np) > 0.5)
    hs, final = normcore.rnn(a["xs"], a["state0"], a["params"], cell=cell, mask=mask)
    grads = normcore.rnn_backward(a["dhs"], a["xs"], a["state0"], a["params"], cell=cell, mask=mask)
    t = lambda arr: xp.permute_dims(arr, (1, 0, *range(2, arr.ndim)))  # noqa: E731
    hs_bf, final_bf = normcore.rnn(
        t(a["xs"]), a["state0"], a["params"], cell=cell, mask=t(mask), batch_first=True
    )
    grads_bf = normcore.rnn_backward(
        t(a["dhs"]), t(a["xs"]), a["state0"], a["params"], cell=cell, mask=t(mask),
        batch_first=True,
    )  # fmt: skip
    np.testing.assert_array_equal(backend.to_numpy(t(hs_bf)), backend.to_numpy(hs))
    np.testing.assert_array_equal(backend.to_numpy(t(grads_bf.dxs)), backend.to_numpy(grads.dxs))
    for got, want in zip(_as_tuple(final_bf), _as_tuple(final), strict=True):
        np.testing.assert_array_equal(backend.to_numpy(got), backend.to_numpy(want))


@pytest.mark.parametrize("cell", CELLS)
def test_zero_steps_return_empty_outputs_and_the_initial_state(backend, rng, cell):
    data, a = _case(backend, "float64", rng, cell, True, steps=0)
    hs, final = normcore.rnn(a["xs"], a["state0"], a["params"], cell=cell)
    assert_like(hs, a["xs"], (0, B, H))
    for got, want in zip(_as_tuple(final), data["state0"], strict=True):
        np.testing.assert_array_equal(backend.to_numpy(got), want)
    grads = normcore.rnn_backward(
        a["dhs"], a["xs"], a["state0"], a["params"], cell=cell, dfinal_state=a["dfinal"]
    )
    assert_like(grads.dxs, a["xs"], (0, B, I))
    for got, want in zip(_as_tuple(grads.dstate0), data["dfinal"], strict=True):
        np.testing.assert_array_equal(backend.to_numpy(got), want)
    assert all(not np.any(backend.to_numpy(g)) for g in grads.dparams.values())


@pytest.mark.parametrize("cell", CELLS)
def test_state0_none_means_zeros(backend, rng, cell):
    _data, a = _case(backend, "float64", rng, cell, True)
    zeros = _public(tuple(backend.asarray(np.zeros((B, H))) for _ in _as_tuple(a["state0"])))
    hs_none, _ = normcore.rnn(a["xs"], None, a["params"], cell=cell)
    hs_zero, _ = normcore.rnn(a["xs"], zeros, a["params"], cell=cell)
    np.testing.assert_array_equal(backend.to_numpy(hs_none), backend.to_numpy(hs_zero))
    grads = normcore.rnn_backward(a["dhs"], a["xs"], None, a["params"], cell=cell)
    assert len(_as_tuple(grads.dstate0)) == len(_as_tuple(a["state0"]))


@pytest.mark.parametrize("missing", [0, 1], ids=["h", "c"])
def test_lstm_state_part_none_means_zeros(backend, rng, missing):
    # Issue #11: (None, c0) / (h0, None), and the same for dfinal_state; the
    # expected values are the torch reference's with that part zero.
    data, a = _case(backend, "float64", rng, "lstm", True)
    state0 = tuple(None if k == missing else s for k, s in enumerate(a["state0"]))
    dfinal = tuple(None if k == missing else d for k, d in enumerate(a["dfinal"]))
    zeroed = [tuple(np.zeros_like(s) if k == missing else s for k, s in enumerate(data[key]))
              for key in ("state0", "dfinal")]  # fmt: skip
    ref_hs, ref_final, ref_dxs, ref_dstate0, _ = reference(
        "lstm", True, data["xs"], zeroed[0], data["params"], data["dhs"], zeroed[1]
    )
    hs, final = normcore.rnn(a["xs"], state0, a["params"], cell="lstm")
    grads = normcore.rnn_backward(
        a["dhs"], a["xs"], state0, a["params"], cell="lstm", dfinal_state=dfinal
    )
    assert_close(backend, hs, ref_hs, "float64")
    for got, want in zip((*final, grads.dxs, *grads.dstate0),
                         (*ref_final, ref_dxs, *ref_dstate0), strict=True):  # fmt: skip
        assert_close(backend, got, want, "float64")


@pytest.mark.parametrize("cell", CELLS)
def test_a_sequence_four_times_longer_than_any_here(rng, cell):
    steps = 4 * 5  # the longest sequence elsewhere in this file has 5 steps
    data, a = _case(_numpy(), "float64", rng, cell, True, steps=steps)
    hs, _ = normcore.rnn(a["xs"], a["state0"], a["params"], cell=cell)
    ref_hs = reference(cell, True, data["xs"], data["state0"], data["params"], data["dhs"],
                       data["dfinal"])[0]  # fmt: skip
    np.testing.assert_allclose(hs, ref_hs, rtol=1e-10, atol=1e-10)


def _numpy():
    from _support import BACKENDS

    return BACKENDS[0]


def _peak_bytes(fn):
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
def test_memory_grows_linearly_with_the_sequence(rng, backward, monkeypatch):
    # One thread: a NumPy-kernel worker that takes its first task only in the
    # measured call allocates its scratch blocks there, which on a loaded machine
    # added up to 0.5 of an activation per step to the long run's peak.
    monkeypatch.setattr(config.settings, "num_threads", 1)
    # The NumPy kernels' per-thread scratch buffers, as a fresh process has them: grown
    # by an earlier test (rows of 70,000), they changed the long run's peak by 6 %.
    monkeypatch.setattr(_numpy_kernels, "_local", threading.local())
    batch, hidden = 8, 16
    params = _random_params(rng, "lstm", True, I, hidden)

    def run(steps):
        xs = rng.normal(size=(steps, batch, I))
        if backward:
            dhs = np.ones((steps, batch, hidden))
            return lambda: normcore.rnn_backward(dhs, xs, None, params, cell="lstm")
        return lambda: normcore.rnn(xs, None, params, cell="lstm")

    per_step = batch * 4 * hidden * 8  # one (B, 4H) float64 activation
    short, long = (_peak_bytes(run(steps)) / (steps * per_step) for steps in (64, 256))
    # O(T * B * H): the peak per step does not grow with T, and stays a few (B, 4H)
    # activations: the forward keeps x W_x and the input terms, the backward also
    # each step's saved activations (freed step by step as the backward uses them)
    # and the gradients of both projections (measured: about 3.1 and 6.3-6.9; 4.1
    # and 9.9 when the backward recomputed each step from its state instead)
    assert long <= 1.05 * short
    assert long < (8 if backward else 6)


def _ln_rnn_hs(params, xs, h0, eps=1e-12):
    return normcore.rnn(xs, h0, params, cell="rnn", layer_norm=True, eps=eps)[0]


def test_ln_rnn_summed_inputs_are_invariant_like_layer_norm(rng):
    """Table 1, layer norm row, on the summed inputs a_t = W_xh x_t + W_hh h_{t-1} of eq. 4."""
    params = _random_params(rng, "rnn", True)
    xs, h0 = rng.normal(size=(T, B, I)), rng.normal(size=(B, H))
    hs = _ln_rnn_hs(params, xs, h0)
    scaled = {**params, "W_x": 3.5 * params["W_x"], "W_h": 3.5 * params["W_h"]}
    np.testing.assert_allclose(_ln_rnn_hs(scaled, xs, h0), hs, rtol=1e-9, atol=1e-9)
    gx, gh = rng.normal(size=(I, 1)), rng.normal(size=(H, 1))
    recentered = {**params, "W_x": params["W_x"] + gx, "W_h": params["W_h"] + gh}
    np.testing.assert_allclose(_ln_rnn_hs(recentered, xs, h0), hs, rtol=1e-9, atol=1e-9)
    # single training case re-scaling: scaling one example's inputs and state scales its a_1
    case = np.ones((B, 1))
    case[1] = 7.0
    first = _ln_rnn_hs(params, xs[:1], h0)
    np.testing.assert_allclose(_ln_rnn_hs(params, xs[:1] * case, h0 * case), first, atol=1e-9)
    plain = _random_params(rng, "rnn", False)
    plain_hs = normcore.rnn(xs, h0, plain, cell="rnn", layer_norm=False)[0]
    plain_scaled = {**plain, "W_x": 3.5 * plain["W_x"], "W_h": 3.5 * plain["W_h"]}
    assert not np.allclose(normcore.rnn(xs, h0, plain_scaled, cell="rnn", layer_norm=False)[0],
                           plain_hs)  # fmt: skip


def test_inputs_are_not_modified(rng):
    _data, a = _case(_numpy(), "float64", rng, "lstm", True)
    copies = {k: v.copy() for k, v in a["params"].items()}
    xs = a["xs"].copy()
    normcore.rnn_backward(a["dhs"], a["xs"], a["state0"], a["params"], cell="lstm")
    np.testing.assert_array_equal(a["xs"], xs)
    for k, v in copies.items():
        np.testing.assert_array_equal(a["params"][k], v)


# -- parameters: initialization and torch conversion ---------------------------
@pytest.mark.parametrize("layer_norm", [False, True], ids=["plain", "ln"])
@pytest.mark.parametrize("cell", CELLS)
def test_rnn_params_initialization(backend, dtype, cell, layer_norm):
    params = normcore.rnn_params(
        cell,
        I,
        H,
        layer_norm=layer_norm,
        like=backend.asarray(np.zeros(1), dtype),
        dtype=backend.dtype(dtype),
        seed=3,
    )
    gates = {"rnn": 1, "lstm": 4, "gru": 3}[cell]
    assert params["W_x"].shape == (I, gates * H) and params["W_h"].shape == (H, gates * H)
    values = {k: backend.to_numpy(v) for k, v in params.items()}
    for name, value in params.items():
        assert_like(value, backend.asarray(np.zeros(value.shape), dtype))
        if name.startswith("gain"):
            assert np.all(values[name] == 1.0), name
        elif name.startswith(("bias", "b")):
            expected = np.zeros(value.shape)
            if cell == "lstm" and name == "b":
                expected[H : 2 * H] = 1.0  # forget gate
            np.testing.assert_array_equal(values[name], expected, err_msg=name)
    limit = np.sqrt(6.0 / (I + H))
    assert np.all(np.abs(values["W_x"]) <= limit * (1 + 1e-2))
    tol = {"float64": 1e-12, "float32": 1e-6}.get(dtype, 2e-2)
    for k in range(gates):
        block = values["W_h"][:, k * H : (k + 1) * H]
        np.testing.assert_allclose(block.T @ block, np.eye(H), atol=tol * 10)
    # every library and dtype gets the same values, rounded to the dtype
    base = normcore.rnn_params(cell, I, H, layer_norm=layer_norm, dtype="float64", seed=3)
    for name, value in values.items():
        np.testing.assert_array_equal(value, backend.to_numpy(backend.asarray(base[name], dtype)))
    other = normcore.rnn_params(cell, I, H, layer_norm=layer_norm, dtype="float64", seed=4)
    assert not np.array_equal(other["W_x"], base["W_x"])


@pytest.mark.parametrize("cell", CELLS)
def test_torch_conversion_both_ways(rng, cell):
    torch = pytest.importorskip("torch")
    module = getattr(torch.nn, {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}[cell])(
        I, H, dtype=torch.float64
    )
    state = module.state_dict()
    params = normcore.rnn_params_from_torch(state, cell)
    assert torch.equal(params["W_x"], state["weight_ih_l0"].T)
    assert torch.equal(params["W_h"], state["weight_hh_l0"].T)
    if cell == "gru":
        assert torch.equal(params["b_x"], state["bias_ih_l0"])
        assert torch.equal(params["b_h"], state["bias_hh_l0"])
    else:
        assert torch.equal(params["b"], state["bias_ih_l0"] + state["bias_hh_l0"])
    # plain normcore equals the module (torch's own arithmetic, float64)
    xs = torch.tensor(rng.normal(size=(T, B, I)))
    hs, _ = normcore.rnn(xs, None, params, cell=cell, layer_norm=False)
    torch.testing.assert_close(hs, module(xs)[0].detach(), rtol=1e-13, atol=1e-13)
    # and back: a fresh module loaded from normcore params computes the same
    fresh = getattr(torch.nn, type(module).__name__)(I, H, dtype=torch.float64)
    fresh.load_state_dict(normcore.rnn_params_to_torch(params, cell))
    torch.testing.assert_close(fresh(xs)[0], module(xs)[0], rtol=1e-13, atol=1e-13)
    params["W_x"].add_(1.0)  # the conversion copies: the module is untouched
    assert not torch.equal(params["W_x"], state["weight_ih_l0"].T)


@pytest.mark.parametrize("layer_norm", [False, True], ids=["plain", "ln"])
@pytest.mark.parametrize("cell", CELLS)
def test_torch_autograd_through_rnn(rng, cell, layer_norm):
    torch = pytest.importorskip("torch")
    params = _random_params(rng, cell, layer_norm, 2, 2)
    names = sorted(params)
    tensors = [torch.tensor(params[k], requires_grad=True) for k in names]
    xs = torch.tensor(rng.normal(size=(3, 2, 2)), requires_grad=True)
    h0 = torch.tensor(rng.normal(size=(2, 2)), requires_grad=True)
    mask = torch.tensor([[True, True], [True, False], [False, False]])

    def f(x, h, *values):
        state = (h, h * 0.5) if cell == "lstm" else h
        hs, final = normcore.rnn(
            x, state, dict(zip(names, values, strict=True)), cell=cell,
            layer_norm=layer_norm, mask=mask,
        )  # fmt: skip
        return hs, *_as_tuple(final)

    assert torch.autograd.gradcheck(f, (xs, h0, *tensors), fast_mode=True)


# -- bad input -----------------------------------------------------------------
def _bad_calls():
    x = np.zeros((T, B, I))
    p = normcore.rnn_params("lstm", I, H, dtype="float64")
    h = np.zeros((B, H))
    mask = np.ones((T, B), bool)
    w_h_wrong = {**p, "W_h": np.zeros((H, 3 * H))}
    no_b = {k: v for k, v in p.items() if k != "b"}
    yield "xs list", ([[1.0]], None, p), {}, TypeError, r"xs must be an array .* got list"
    yield "xs 2-D", (x[0], None, p), {}, ValueError, r"xs must be 3-D \(time, batch, input\)"
    yield "cell", (x, None, p), {"cell": "lsmt"}, ValueError, r"cell must be one of"
    yield "cell type", (x, None, p), {"cell": 2}, TypeError, r"cell must be a str"
    yield "layer_norm", (x, None, p), {"layer_norm": 1}, TypeError, r"layer_norm must be True"
    yield "eps", (x, None, p), {"eps": 0.0}, ValueError, r"eps must be a finite number > 0"
    yield "params type", (x, None, [1]), {}, TypeError, r"params must be a mapping"
    yield (
        "missing key",
        (x, None, no_b),
        {},
        ValueError,
        r"params for cell='lstm', "
        + (r"layer_norm=True must have exactly the keys .* missing \['b'\]"),
    )
    yield (
        "plain keys for ln",
        (x, None, p),
        {"layer_norm": False},
        ValueError,
        (r"unexpected \['bias_c'"),
    )
    yield "W_h shape", (x, None, w_h_wrong), {}, ValueError, r"params\['W_h'\] must have shape"
    yield (
        "feature size",
        (np.zeros((T, B, I + 1)), None, p),
        {},
        ValueError,
        (r"params\['W_x'\] must have shape \(6, 16\)"),
    )
    yield (
        "param dtype",
        (x, None, {**p, "b": p["b"].astype(np.float32)}),
        {},
        TypeError,
        (r"params\['b'\] must have dtype float64 like xs, got float32"),
    )
    yield (
        "state structure",
        (x, h, p),
        {},
        TypeError,
        (r"state0 for cell='lstm' must be a tuple \(h, c\) of two arrays, got numpy.ndarray$"),
    )
    yield (
        "state of three arrays",
        (x, (h, h, h), p),
        {},
        TypeError,
        (
            r"state0 for cell='lstm' must be a tuple \(h, c\) of two arrays, "
            r"got a tuple of length 3$"
        ),
    )
    yield (
        "state for gru",
        (x, (h, h), normcore.rnn_params("gru", I, H, dtype="float64")),
        {"cell": "gru"},
        TypeError,
        r"state0 for cell='gru' must be one array h",
    )
    yield (
        "state batch",
        (x, (h, np.zeros((B + 1, H))), p),
        {},
        ValueError,
        (r"state0.c must have shape \(batch, hidden\) = \(3, 4\), got \(4, 4\)"),
    )
    yield "state library", (x, (h, [[0.0]]), p), {}, TypeError, r"state0.c must be an array"
    yield (
        "mask dtype",
        (x, None, p),
        {"mask": mask.astype(float)},
        TypeError,
        (r"mask must have dtype bool, got float64"),
    )
    yield (
        "mask shape",
        (x, None, p),
        {"mask": mask.T},
        ValueError,
        (r"mask must have shape \(time, batch\) = \(4, 3\), got \(3, 4\)"),
    )
    yield (
        "mask shape bf",
        (x, None, p),
        {"mask": mask.T, "batch_first": True},
        ValueError,
        r"mask must have shape \(batch, time\) = \(4, 3\), got \(3, 4\)",
    )
    yield (
        "mask type",
        (x, None, p),
        {"mask": [[True]]},
        TypeError,
        r"mask must be an array of the same library as xs \(numpy.ndarray\), got list",
    )


BAD_CALLS = list(_bad_calls())


@pytest.mark.parametrize("function", ["rnn", "rnn_backward"])
@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [case[1:] for case in BAD_CALLS],
    ids=[case[0] for case in BAD_CALLS],
)
def test_bad_input_names_the_argument(function, args, kwargs, error, match):
    kwargs = {"cell": "lstm", **kwargs}
    with pytest.raises(error, match=match):
        if function == "rnn":
            normcore.rnn(*args, **kwargs)
        else:
            normcore.rnn_backward(np.zeros((T, B, H)), *args, **kwargs)


def test_bad_output_gradients():
    x = np.zeros((T, B, I))
    p = normcore.rnn_params("gru", I, H, dtype="float64")
    with pytest.raises(ValueError, match=r"dhs must have the shape of hs \(4, 3, 4\), got"):
        normcore.rnn_backward(np.zeros((T, B, H + 1)), x, None, p, cell="gru")
    with pytest.raises(TypeError, match=r"dhs must have dtype float64 like xs, got float32"):
        normcore.rnn_backward(np.zeros((T, B, H), np.float32), x, None, p, cell="gru")
    with pytest.raises(ValueError, match=r"dfinal_state must have shape \(batch, hidden\)"):
        normcore.rnn_backward(
            np.zeros((T, B, H)), x, None, p, cell="gru", dfinal_state=np.zeros((B, 1))
        )


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: normcore.rnn_params("cnn", 2, 2), ValueError, r"cell must be one of"),
        (lambda: normcore.rnn_params("rnn", 0, 2), ValueError, r"input_size must be >= 1, got 0"),
        (lambda: normcore.rnn_params("rnn", 2, 2.0), TypeError, r"hidden_size must be an int"),
        (lambda: normcore.rnn_params("rnn", 2, 2, seed=-1), ValueError, r"seed must be >= 0"),
        (lambda: normcore.rnn_params("rnn", 2, 2, dtype="int32"), TypeError, r"dtype must be"),
        (
            lambda: normcore.rnn_params_from_torch({"weight_ih_l0": 1}, "rnn"),
            ValueError,
            r"state_dict must have exactly the keys .* missing \['bias_hh_l0'",
        ),
        (
            lambda: normcore.rnn_params_to_torch(normcore.rnn_params("rnn", 2, 2), "rnn"),
            ValueError,
            r"params for cell='rnn', layer_norm=False must have exactly the keys .* "
            r"unexpected \['bias', 'gain'\]",
        ),
    ],
)
def test_bad_params_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()


def _lstm_state_dict(inputs=3, hidden=2):
    """A one-layer LSTM's state dict in torch's layout (NumPy arrays: no torch needed)."""
    g = 4 * hidden
    shapes = ((g, inputs), (g, hidden), (g,), (g,))
    keys = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")
    return {k: np.ones(shape) for k, shape in zip(keys, shapes, strict=True)}


@pytest.mark.parametrize(
    ("change", "cell", "error", "match"),
    [
        (
            {},
            "gru",
            ValueError,
            r"state_dict\['weight_ih_l0'\] must have shape \(6, 3\) for cell='gru' \(3 blocks "
            r"of hidden size 2.*got \(8, 3\)",
        ),
        ({"bias_hh_l0": np.ones(6)}, "lstm", ValueError, r"state_dict\['bias_hh_l0'\] .*\(8,\)"),
        (
            {"weight_hh_l0": np.ones(8)},
            "lstm",
            ValueError,
            r"state_dict\['weight_hh_l0'\] must be a 2-D weight matrix, got shape \(8,\)",
        ),
        (
            {"weight_ih_l0": [[1.0]]},
            "lstm",
            TypeError,
            r"state_dict\['weight_ih_l0'\] must be an array \(numpy.ndarray",
        ),
        (
            {"bias_ih_l0": [1.0] * 8},
            "lstm",
            TypeError,
            r"state_dict\['bias_ih_l0'\] must be an array of the same library as "
            r"state_dict\['weight_ih_l0'\] \(numpy.ndarray\), got list",
        ),
        (
            {"bias_ih_l0": np.ones(8, np.float32)},
            "lstm",
            TypeError,
            r"state_dict\['bias_ih_l0'\] must have dtype float64 like",
        ),
    ],
)
def test_rnn_params_from_torch_checks_every_entry(change, cell, error, match):
    with pytest.raises(error, match=match):
        normcore.rnn_params_from_torch({**_lstm_state_dict(), **change}, cell)


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"b": np.ones(6)}, ValueError, r"params\['b'\] must have shape \(8,\) for cell='lstm'"),
        ({"W_h": np.ones((2, 6))}, ValueError, r"params\['W_h'\] must have shape \(2, 8\)"),
        ({"W_x": np.ones(8)}, ValueError, r"params\['W_x'\] must be a 2-D weight matrix"),
        ({"b": [0.0] * 8}, TypeError, r"params\['b'\] must be an array of the same library"),
    ],
)
def test_rnn_params_to_torch_checks_every_entry(change, error, match):
    params = normcore.rnn_params("lstm", 3, 2, layer_norm=False, dtype="float64")
    with pytest.raises(error, match=match):
        normcore.rnn_params_to_torch({**params, **change}, "lstm")


def test_params_shape_message_shows_the_actual_sizes():
    # LSTM-sized weights (W_h is 2 x 8) given for a GRU: the message must not invent W_h's width.
    params = normcore.rnn_params("gru", 3, 2, layer_norm=False, dtype="float64")
    params = {**params, "W_x": np.ones((3, 8)), "W_h": np.ones((2, 8))}
    with pytest.raises(ValueError) as info:
        normcore.rnn(np.zeros((4, 1, 3)), None, params, cell="gru", layer_norm=False)
    message = str(info.value)
    assert "params['W_x'] must have shape (3, 6)" in message and "got (3, 8)" in message
    assert "hidden size 2 (the rows of W_h)" in message and "2 x 6" not in message


def test_mask_on_another_device_and_missing_dhs():
    strict = pytest.importorskip("array_api_strict")
    device = strict.Device("device1")
    params = {
        k: strict.asarray(v, device=device)
        for k, v in normcore.rnn_params("rnn", 2, 3, dtype="float64").items()
    }
    xs = strict.zeros((4, 1, 2), dtype=strict.float64, device=device)
    mask = strict.ones((4, 1), dtype=strict.bool, device=strict.Device("CPU_DEVICE"))
    with pytest.raises(ValueError, match=r"mask is on device .*CPU_DEVICE.* but xs is on device"):
        normcore.rnn(xs, None, params, cell="rnn", mask=mask)
    with pytest.raises(TypeError, match=r"dhs must be an array, got None"):
        normcore.rnn_backward(None, xs, None, params, cell="rnn")


def test_nonlinearity_is_checked():
    xs, p = np.zeros((T, B, I)), normcore.rnn_params("lstm", I, H, dtype="float64")
    with pytest.raises(ValueError, match=r"^nonlinearity='relu' is for cell='rnn' only"):
        normcore.rnn(xs, None, p, cell="lstm", nonlinearity="relu")
    with pytest.raises(ValueError, match=r"^nonlinearity must be one of \('tanh', 'relu'\)"):
        normcore.rnn_backward(np.zeros((T, B, H)), xs, None, p, cell="lstm", nonlinearity="elu")


def test_state_given_as_a_tuple_for_a_one_state_cell_names_its_type():
    params = normcore.rnn_params("gru", 2, 3, dtype="float64")
    h = np.zeros((1, 3))
    with pytest.raises(TypeError, match=r"state0 for cell='gru' must be one array h, got tuple$"):
        normcore.rnn(np.zeros((4, 1, 2)), (h,), params, cell="gru")

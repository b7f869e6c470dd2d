"""normcore.RNN / LSTM / GRU objects on every backend, path and dtype."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from _rnn_reference import reference
from _support import assert_close, assert_like, assert_unchanged, random_state, snapshot

import normcore

CELLS = {"rnn": normcore.RNN, "lstm": normcore.LSTM, "gru": normcore.GRU}
T, B, I, H = 4, 3, 5, 4  # noqa: E741


def _module_dtype(dtype):
    return "float32" if dtype in ("float16", "bfloat16") else dtype


def _tuple(state):
    return state if isinstance(state, tuple) else (state,)


@pytest.mark.parametrize("batch_first", [False, True], ids=["time-major", "batch-first"])
@pytest.mark.parametrize("layer_norm", [False, True], ids=["plain", "ln"])
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_recurrent_object_matches_the_reference(backend, dtype, rng, cell, layer_norm, batch_first):
    like = backend.asarray(np.zeros(1), dtype)
    obj = CELLS[cell](I, H, layer_norm=layer_norm, batch_first=batch_first, like=like, dtype=dtype)
    obj.load_state_dict(random_state(rng, obj))
    params = {k: backend.to_numpy(v) for k, v in obj.parameters().items()}

    def rounded(shape):
        return backend.to_numpy(backend.asarray(rng.normal(size=shape), dtype))

    xs, dhs = rounded((T, B, I)), rounded((T, B, H))
    state0 = tuple(rounded((B, H)) for _ in range(2 if cell == "lstm" else 1))
    dfinal = tuple(rounded((B, H)) for _ in state0)
    ref_hs, ref_final, ref_dxs, ref_dstate0, ref_dparams = reference(
        cell, layer_norm, xs, state0, params, dhs, dfinal
    )

    def arr(a, moved=False):
        return backend.asarray(np.swapaxes(a, 0, 1) if moved and batch_first else a, dtype)

    def public(parts):
        parts = tuple(arr(p) for p in parts)
        return parts if cell == "lstm" else parts[0]

    x = arr(xs, moved=True)
    hs, final = obj(x, public(state0))
    functional = normcore.rnn(
        x, public(state0), obj.parameters(), cell=cell, layer_norm=layer_norm,
        batch_first=batch_first,
    )  # fmt: skip
    np.testing.assert_array_equal(backend.to_numpy(hs), backend.to_numpy(functional[0]))
    scale = 1.0 if dtype == "float64" else 4.0 * T
    moved = np.swapaxes(ref_hs, 0, 1) if batch_first else ref_hs
    assert_close(backend, hs, moved, dtype, scale)
    for got, want in zip(_tuple(final), ref_final, strict=True):
        assert_close(backend, got, want, dtype, scale)
    dxs = obj.backward(arr(dhs, moved=True), public(dfinal))
    assert_like(dxs, x)
    want_dxs = np.swapaxes(ref_dxs, 0, 1) if batch_first else ref_dxs
    assert_close(backend, dxs, want_dxs, dtype, 4 * scale)
    assert isinstance(obj.dstate0, tuple) == (cell == "lstm")
    for got, want in zip(_tuple(obj.dstate0), ref_dstate0, strict=True):
        assert_close(backend, got, want, dtype, 4 * scale)
    grads = obj.grads()
    assert list(grads) == list(obj.parameters())
    for name, want in ref_dparams.items():
        assert_close(backend, grads[name], want, dtype, 4 * scale * T * B)


def test_recurrent_backward_uses_the_parameters_and_mask_of_the_forward(backend, rng):
    x = backend.asarray(rng.normal(size=(T, B, I)))
    mask = backend.xp.asarray(np.arange(T)[:, None] < np.array([4, 2, 1]), device=backend.device)
    obj = normcore.GRU(I, H, like=x, dtype="float64")
    params = dict(obj.parameters())
    obj(x, mask=mask)
    obj.load_state_dict(random_state(rng, obj))  # changed after the forward
    dhs = backend.asarray(rng.normal(size=(T, B, H)))
    dxs = obj.backward(dhs)
    want = normcore.rnn_backward(dhs, x, None, params, cell="gru", mask=mask)
    np.testing.assert_array_equal(backend.to_numpy(dxs), backend.to_numpy(want.dxs))
    np.testing.assert_array_equal(backend.to_numpy(obj.dstate0), backend.to_numpy(want.dstate0))
    assert np.all(backend.to_numpy(dxs)[2:, 2] == 0)  # masked steps get no gradient


@pytest.mark.parametrize(
    "stack", [{}, {"num_layers": 2, "bidirectional": True}], ids=["1-layer", "2-layers-bidir"]
)
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_training_backward_walks_the_forwards_tape(backend, rng, monkeypatch, cell, stack):
    """A training call keeps its tape: the backward runs no forward, eval() recomputes it.

    Both give the same gradients bit for bit (one loop, the same arithmetic);
    the tape is released by a backward that succeeds, kept by one that raises.
    """
    from normcore._reference import recurrence

    if backend.name == "dask":
        pytest.skip("dask runs the layers part by part (map_batches): nothing to keep")
    forwards = []
    real_forward = recurrence.forward
    monkeypatch.setattr(
        recurrence, "forward", lambda *a, **k: forwards.append(1) or real_forward(*a, **k)
    )
    x = backend.asarray(rng.normal(size=(T, B, I)))
    width = H * (2 if stack else 1)
    dhs = backend.asarray(rng.normal(size=(T, B, width)))
    layers = 2 * len(stack) or 1  # calls of the loop per forward: layers x directions
    # Recomputing, a stack's backward runs its forward for every layer's input, then
    # each layer's backward its own forward.
    recompute = 2 * layers if stack else layers
    obj = CELLS[cell](I, H, like=x, dtype="float64", **stack)
    obj(x)
    assert len(forwards) == layers
    before = snapshot(backend, obj)
    with pytest.raises(ValueError, match="dhs"):
        obj.backward(backend.asarray(rng.normal(size=(T, B + 1, width))))
    assert_unchanged(backend, obj, before)
    taped = obj.backward(dhs)
    assert len(forwards) == layers  # no forward ran again
    assert obj._saved[4] is None  # the tape is released
    taped_grads = {k: backend.to_numpy(v) for k, v in obj.grads().items()}
    again = obj.backward(dhs)  # recomputed now, the same values
    assert len(forwards) == layers + recompute
    obj.eval()
    obj(x)
    recomputed = obj.backward(dhs)
    assert len(forwards) == 2 * (layers + recompute)  # eval: a forward, then recomputing
    for other in (again, recomputed):
        np.testing.assert_array_equal(backend.to_numpy(taped), backend.to_numpy(other))
    for k, v in obj.grads().items():
        np.testing.assert_array_equal(taped_grads[k], backend.to_numpy(v))


def _trained_lstm(backend, rng):
    x = backend.asarray(rng.normal(size=(T, B, I)), "float32")
    obj = normcore.LSTM(I, H, like=x)
    obj(x)
    obj.backward(backend.asarray(rng.normal(size=(T, B, H)), "float32"))
    return obj


@pytest.mark.parametrize(
    ("make_args", "error", "message"),
    [
        (lambda b: ([[[1.0] * I]],), TypeError, r"^xs must be an array .* got list"),
        (
            lambda b: (b.asarray(np.ones((T, B, I)), "float64"),),
            TypeError,
            r"^xs must have this LSTM's dtype .*float32, got .*float64; convert xs",
        ),
        (
            lambda b: (b.asarray(np.ones((T, B, I + 1)), "float32"),),
            ValueError,
            r"^xs must have input_size=5 values along axis -1, got shape \(4, 3, 6\)",
        ),
        (
            lambda b: (b.asarray(np.ones((T, I)), "float32"),),
            ValueError,
            r"^xs must be 3-D \(time, batch, input\)",
        ),
        (
            lambda b: (b.asarray(np.ones((T, B, I)), "float32"), b.asarray(np.ones((B, H)))),
            TypeError,
            r"^state0 for cell='lstm' must be a tuple \(h, c\)",
        ),
    ],
    ids=["list", "float64", "input-size", "2-d", "state-structure"],
)
def test_recurrent_bad_input_raises_like_the_function(backend, rng, make_args, error, message):
    obj = _trained_lstm(backend, rng)
    before = snapshot(backend, obj)
    dstate0 = obj.dstate0
    with pytest.raises(error, match=message):
        obj(*make_args(backend))
    with pytest.raises(ValueError, match=r"^dhs must have the shape of hs \(4, 3, 4\)"):
        obj.backward(backend.asarray(np.ones((T, B, H + 1)), "float32"))
    assert_unchanged(backend, obj, before)
    assert obj.dstate0 is dstate0


def test_recurrent_object_names_xs_for_low_precision_input(backend, rng):
    """float16 xs to a float32 LSTM: the error names xs and the layer (not a parameter)."""
    low = next((d for d in ("float16", "bfloat16") if d in backend.dtypes), None)
    if low is None:
        pytest.skip(f"{backend.name} has no float16/bfloat16")
    obj = _trained_lstm(backend, rng)
    before = snapshot(backend, obj)
    with pytest.raises(TypeError, match=rf"^xs must have this LSTM's dtype .*float32, got .*{low}"):
        obj(backend.asarray(np.ones((T, B, I)), low))
    assert_unchanged(backend, obj, before)


def test_recurrent_constructor_errors():
    with pytest.raises(TypeError, match=r"batch_first must be True or False, got int"):
        normcore.LSTM(I, H, batch_first=1)
    with pytest.raises(TypeError, match=r"layer_norm must be True or False, got str"):
        normcore.GRU(I, H, layer_norm="yes")
    with pytest.raises(ValueError, match=r"hidden_size must be >= 1, got 0"):
        normcore.RNN(I, 0)
    with pytest.raises(TypeError, match=r"input_size must be an int, got float"):
        normcore.RNN(2.0, H)
    with pytest.raises(RuntimeError, match=r"LSTM.backward needs a forward call"):
        normcore.LSTM(I, H).backward(np.zeros((T, B, H), np.float32))


STACKS = {
    "2-layers": {"num_layers": 2},
    "bidirectional": {"bidirectional": True},
    "2-layers-bidirectional": {"num_layers": 2, "bidirectional": True},
    "relu": {"nonlinearity": "relu"},
    "relu-2-layers-bidirectional": {"nonlinearity": "relu", "num_layers": 2, "bidirectional": True},
}


@pytest.mark.parametrize("batch_first", [False, True], ids=["time-major", "batch-first"])
@pytest.mark.parametrize("stack", list(STACKS))
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_stacked_object_equals_torch_nn(rng, cell, stack, batch_first):
    """Forward, input/state gradients and weight gradients of torch.nn, float64."""
    torch = pytest.importorskip("torch")
    kwargs = STACKS[stack]
    if "nonlinearity" in kwargs and cell != "rnn":
        pytest.skip("nonlinearity is torch.nn.RNN's option only")
    name = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}[cell]
    theirs = getattr(torch.nn, name)(I, H, batch_first=batch_first, dtype=torch.float64, **kwargs)
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.as_tensor(rng.normal(size=tuple(p.shape))))
    ours = CELLS[cell](I, H, layer_norm=False, batch_first=batch_first, dtype="float64", **kwargs)
    ours.load_torch_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    count = kwargs.get("num_layers", 1) * (2 if kwargs.get("bidirectional") else 1)
    parts = 2 if cell == "lstm" else 1
    shape = (B, T, I) if batch_first else (T, B, I)
    xs = rng.normal(size=shape)
    out_shape = (*shape[:2], H * (2 if kwargs.get("bidirectional") else 1))
    dhs = rng.normal(size=out_shape)
    hx = [rng.normal(size=(count, B, H)) for _ in range(parts)]
    dfinal = [rng.normal(size=(count, B, H)) for _ in range(parts)]

    x_t = torch.tensor(xs, requires_grad=True)
    hx_t = [torch.tensor(h, requires_grad=True) for h in hx]
    out, final = theirs(x_t, tuple(hx_t) if cell == "lstm" else hx_t[0])
    finals_t = final if cell == "lstm" else (final,)
    loss = (out * torch.tensor(dhs)).sum()
    loss = loss + sum((f * torch.tensor(d)).sum() for f, d in zip(finals_t, dfinal, strict=True))
    loss.backward()

    def per_layer(arrays):
        states = [tuple(a[k] for a in arrays) for k in range(count)]
        states = [s if cell == "lstm" else s[0] for s in states]
        return states if count > 1 else states[0]  # one layer: the one-layer API

    hs, finals = ours(xs, per_layer(hx))
    finals = finals if count > 1 else [finals]
    np.testing.assert_allclose(hs, out.detach().numpy(), rtol=1e-12, atol=1e-12)
    for k, got in enumerate(finals):
        for g, want in zip(_tuple(got), finals_t, strict=True):
            np.testing.assert_allclose(g, want[k].detach().numpy(), rtol=1e-12, atol=1e-12)
    dxs = ours.backward(dhs, per_layer(dfinal))
    np.testing.assert_allclose(dxs, x_t.grad.numpy(), rtol=1e-12, atol=1e-12)
    for k, got in enumerate(ours.dstate0 if count > 1 else [ours.dstate0]):
        for g, h_t in zip(_tuple(got), hx_t, strict=True):
            np.testing.assert_allclose(g, h_t.grad[k].numpy(), rtol=1e-12, atol=1e-12)
    # Weight gradients: ours are those of torch's layout, transposed; b takes bias_ih's.
    ours_grads = ours.grads()
    for key, p in theirs.named_parameters():
        suffix = key.split("_", 2)[2]  # l0, l1_reverse, ...
        suffix = "" if suffix == "l0" else "_" + suffix
        base = {"weight_ih": "W_x", "weight_hh": "W_h"}.get(key.rsplit("_l", 1)[0])
        if base is None:  # a bias
            base = ("b_x" if "ih" in key else "b_h") if cell == "gru" else "b"
            want = p.grad.numpy()
        else:
            want = p.grad.numpy().T
        np.testing.assert_allclose(ours_grads[base + suffix], want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_masked_sequences_in_both_directions_equal_each_sequence_alone(rng, cell):
    """With a mask, each direction of each layer sees each sequence as if it ran alone."""
    layer = CELLS[cell](I, H, num_layers=2, bidirectional=True, dtype="float64", seed=3)
    lengths = [T, 2, 1]  # B sequences, uneven, one of them whole
    xs = rng.normal(size=(T, B, I))
    mask = np.arange(T)[:, None] < np.asarray(lengths)[None, :]
    xs_padded = np.where(mask[..., None], xs, 1e3)  # the padding must never be read
    hs, finals = layer(xs_padded, mask=mask)
    dhs = rng.normal(size=hs.shape)
    dxs = layer.backward(dhs)
    for b, n in enumerate(lengths):
        alone, alone_finals = layer(xs[:n, b : b + 1])
        np.testing.assert_allclose(hs[:n, b], alone[:, 0], rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(hs[n:, b], 0.0)
        for got, want in zip(finals, alone_finals, strict=True):
            for g, w in zip(_tuple(got), _tuple(want), strict=True):
                np.testing.assert_allclose(g[b], w[0], rtol=1e-12, atol=1e-12)
        alone_dxs = layer.backward(dhs[:n, b : b + 1])
        np.testing.assert_allclose(dxs[:n, b], alone_dxs[:, 0], rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(dxs[n:, b], 0.0)


def test_stacked_object_refuses_bad_states():
    layer = normcore.GRU(I, H, bidirectional=True, dtype="float64")
    xs = np.zeros((T, B, I))
    with pytest.raises(TypeError, match=r"state0 .* must be None or a list of 2 states"):
        layer(xs, np.zeros((B, H)))
    assert sorted(layer.parameters())[:3] == ["W_h", "W_h_l0_reverse", "W_x"]
    state = layer.to_torch_state_dict()
    del state["weight_hh_l0_reverse"]
    with pytest.raises(ValueError, match=r"missing \['weight_hh_l0_reverse'\], unexpected \[\]"):
        layer.load_torch_state_dict(state)


@pytest.mark.parametrize("training", [True, False], ids=["taped", "recomputed"])
def test_stacked_backward_refuses_extra_output_features(rng, training):
    """dhs with 2H + 1 features for a bidirectional layer: refused, not a column ignored."""
    layer = normcore.LSTM(I, H, bidirectional=True, dtype="float64").train(training)
    layer(rng.normal(size=(T, B, I)))
    numpy_backend = SimpleNamespace(to_numpy=np.asarray)  # what snapshot() asks of a backend
    before = snapshot(numpy_backend, layer)
    with pytest.raises(
        ValueError, match=r"dhs must have the shape of hs, 8 features .* \(4, 3, 9\)"
    ):
        layer.backward(rng.normal(size=(T, B, 2 * H + 1)))
    assert_unchanged(numpy_backend, layer, before)


def test_stacked_object_with_a_mask_equals_each_sequence_alone(rng):
    layer = normcore.LSTM(I, H, num_layers=2, dtype="float64", seed=4)
    xs = rng.normal(size=(T, 2, I))
    mask = np.ones((T, 2), bool)
    mask[2:, 1] = False  # the second sequence has 2 steps
    hs, finals = layer(xs, None, mask)
    short, short_finals = layer(xs[:2, 1:], None)  # alone, unpadded
    np.testing.assert_allclose(hs[:2, 1:], short, rtol=1e-12, atol=1e-12)
    assert not np.any(hs[2:, 1])
    for got, want in zip(finals, short_finals, strict=True):
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g[1:], w, rtol=1e-12, atol=1e-12)

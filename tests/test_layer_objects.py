"""normcore.GroupNorm and normcore.RNN/LSTM/GRU objects on every backend, path and dtype."""

from __future__ import annotations

import numpy as np
import pytest
from _rnn_reference import reference
from _support import assert_close, torch_values_and_grads

import normcore
from normcore.optim import Adam

CELLS = {"rnn": normcore.RNN, "lstm": normcore.LSTM, "gru": normcore.GRU}
T, B, I, H = 4, 3, 5, 4  # noqa: E741


def _module_dtype(dtype):
    return "float32" if dtype in ("float16", "bfloat16") else dtype


def _snapshot(backend, obj):
    return (
        {k: (v, backend.to_numpy(v)) for k, v in obj.state_dict().items()},
        obj._saved,
        obj.grads(),
    )


def _assert_unchanged(backend, obj, snapshot):
    state, saved, grads = snapshot
    assert list(obj.state_dict()) == list(state)
    for name, (array, values) in state.items():
        assert obj.state_dict()[name] is array
        np.testing.assert_array_equal(backend.to_numpy(array), values)
    assert obj._saved is saved
    assert obj.grads().keys() == grads.keys()
    assert all(obj.grads()[k] is v for k, v in grads.items())


# -- GroupNorm ------------------------------------------------------------------------------
def _group_norm_torch(num_groups, axis):
    torch = pytest.importorskip("torch")

    def run(x, gain, bias):
        moved = torch.movedim(x, axis, 1)
        return torch.movedim(
            torch.nn.functional.group_norm(moved, num_groups, gain, bias, 1e-5), 1, axis
        )

    return run


@pytest.mark.parametrize(("shape", "axis"), [((3, 6), 1), ((2, 6, 4), 1), ((2, 3, 2, 6), -1)])
def test_group_norm_object_matches_torch_and_the_function(backend, dtype, rng, shape, axis):
    x = backend.asarray(rng.normal(1.0, 2.0, size=shape), dtype)
    dy = backend.asarray(rng.normal(size=shape), dtype)
    layer = normcore.GroupNorm(3, 6, axis=axis, like=x, dtype=_module_dtype(dtype))
    layer.load_state_dict({"gain": rng.normal(1.0, 0.3, 6), "bias": rng.normal(0.0, 0.3, 6)})
    y = layer(x)
    backend.assert_like(y, x)
    functional = normcore.group_norm(x, 3, layer.gain, layer.bias, axis=axis)
    np.testing.assert_array_equal(backend.to_numpy(y), backend.to_numpy(functional))
    gain, bias = backend.to_numpy(layer.gain), backend.to_numpy(layer.bias)
    want, (dx, dgain, dbias) = torch_values_and_grads(
        _group_norm_torch(3, axis), backend.to_numpy(dy), backend.to_numpy(x), gain, bias
    )
    assert_close(backend, y, want, dtype)
    assert_close(backend, layer.backward(dy), dx, dtype, scale=4)
    grads = layer.grads()
    assert list(grads) == ["gain", "bias"]
    scale = 4 * np.sqrt(np.prod(shape) / 6)
    assert_close(backend, grads["gain"], dgain, _module_dtype(dtype), scale=scale)
    assert_close(backend, grads["bias"], dbias, _module_dtype(dtype), scale=scale)


def test_group_norm_without_affine(backend, rng):
    x_np = rng.normal(size=(2, 4, 3))
    layer = normcore.GroupNorm(2, 4, affine=False, like=backend.asarray(x_np), dtype="float64")
    assert layer.state_dict() == {}
    groups = x_np.reshape(2, 2, 6)
    expected = (groups - groups.mean(-1, keepdims=True)) / np.sqrt(
        groups.var(-1, keepdims=True) + 1e-5
    )
    assert_close(backend, layer(backend.asarray(x_np)), expected.reshape(2, 4, 3), "float64")
    layer.backward(backend.asarray(np.ones((2, 4, 3))))
    assert layer.grads() == {}


def _trained_group_norm(backend, rng):
    x = backend.asarray(rng.normal(size=(2, 4, 3)), "float32")
    layer = normcore.GroupNorm(2, 4, like=x)
    layer(x)
    layer.backward(backend.asarray(rng.normal(size=(2, 4, 3)), "float32"))
    return layer


@pytest.mark.parametrize(
    ("make_x", "error", "message"),
    [
        (lambda b: [[1.0] * 4] * 2, TypeError, r"^x must be an array .* got list"),
        (
            lambda b: b.asarray(np.ones((2, 4, 3)), "float64"),
            TypeError,
            r"^x must have this GroupNorm's dtype .*float32 \(float16/bfloat16 is accepted by a "
            r"float32 GroupNorm\), got .*float64",
        ),
        (
            lambda b: b.asarray(np.ones((2, 6, 3)), "float32"),
            ValueError,
            r"^x must have num_channels=4 values along axis 1, got shape \(2, 6, 3\)",
        ),
        (lambda b: b.asarray(np.ones(4), "float32"), ValueError, r"^x must have at least 2 dim"),
    ],
    ids=["list", "float64", "channels", "1-d"],
)
def test_group_norm_bad_input_raises_like_the_function(backend, rng, make_x, error, message):
    layer = _trained_group_norm(backend, rng)
    before = _snapshot(backend, layer)
    with pytest.raises(error, match=message):
        layer(make_x(backend))
    with pytest.raises(ValueError, match=r"^dy must have x's shape \(2, 4, 3\)"):
        layer.backward(backend.asarray(np.ones((2, 3, 4)), "float32"))
    _assert_unchanged(backend, layer, before)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"num_groups": 3}, ValueError, r"num_groups must be a positive divisor .* \(4\), got 3"),
        ({"num_channels": 0}, ValueError, r"num_channels must be >= 1, got 0"),
        ({"axis": 0}, ValueError, r"axis must be the channel axis, not the batch axis 0"),
        ({"axis": 1.0}, TypeError, r"axis must be an int, got float"),
        ({"affine": 1}, TypeError, r"affine must be True or False, got int"),
        ({"affine": "no"}, TypeError, r"affine must be True or False, got str"),
        ({"eps": -1.0}, ValueError, r"eps must be a finite number > 0, got -1.0"),
    ],
)
def test_group_norm_constructor_errors(kwargs, error, message):
    kwargs = {"num_groups": 2, "num_channels": 4, **kwargs}
    with pytest.raises(error, match=message):
        normcore.GroupNorm(kwargs.pop("num_groups"), kwargs.pop("num_channels"), **kwargs)


# -- RNN / LSTM / GRU -----------------------------------------------------------------------
def _random_state(rng, obj):
    return {
        k: (1.0 if k.startswith("gain") else 0.0) + 0.5 * rng.normal(size=tuple(v.shape))
        for k, v in obj.state_dict().items()
    }


def _tuple(state):
    return state if isinstance(state, tuple) else (state,)


@pytest.mark.parametrize("batch_first", [False, True], ids=["time-major", "batch-first"])
@pytest.mark.parametrize("layer_norm", [False, True], ids=["plain", "ln"])
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_recurrent_object_matches_the_reference(backend, dtype, rng, cell, layer_norm, batch_first):
    like = backend.asarray(np.zeros(1), dtype)
    obj = CELLS[cell](I, H, layer_norm=layer_norm, batch_first=batch_first, like=like, dtype=dtype)
    obj.load_state_dict(_random_state(rng, obj))
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
    backend.assert_like(dxs, x)
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
    obj.load_state_dict(_random_state(rng, obj))  # changed after the forward
    dhs = backend.asarray(rng.normal(size=(T, B, H)))
    dxs = obj.backward(dhs)
    want = normcore.rnn_backward(dhs, x, None, params, cell="gru", mask=mask)
    np.testing.assert_array_equal(backend.to_numpy(dxs), backend.to_numpy(want.dxs))
    np.testing.assert_array_equal(backend.to_numpy(obj.dstate0), backend.to_numpy(want.dstate0))
    assert np.all(backend.to_numpy(dxs)[2:, 2] == 0)  # masked steps get no gradient


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
    before = _snapshot(backend, obj)
    dstate0 = obj.dstate0
    with pytest.raises(error, match=message):
        obj(*make_args(backend))
    with pytest.raises(ValueError, match=r"^dhs must have the shape of hs \(4, 3, 4\)"):
        obj.backward(backend.asarray(np.ones((T, B, H + 1)), "float32"))
    _assert_unchanged(backend, obj, before)
    assert obj.dstate0 is dstate0


def test_recurrent_object_names_xs_for_low_precision_input(backend, rng):
    """float16 xs to a float32 LSTM: the error names xs and the layer (not a parameter)."""
    low = next((d for d in ("float16", "bfloat16") if d in backend.dtypes), None)
    if low is None:
        pytest.skip(f"{backend.name} has no float16/bfloat16")
    obj = _trained_lstm(backend, rng)
    before = _snapshot(backend, obj)
    with pytest.raises(TypeError, match=rf"^xs must have this LSTM's dtype .*float32, got .*{low}"):
        obj(backend.asarray(np.ones((T, B, I)), low))
    _assert_unchanged(backend, obj, before)


@pytest.mark.parametrize(
    ("cls", "args", "change", "message"),
    [
        (
            normcore.LSTM,
            (I, H),
            {"drop": "gain_c"},
            r"missing keys \['gain_c'\], unexpected keys \[\]",
        ),
        (normcore.GRU, (I, H), {"add": "b"}, r"missing keys \[\], unexpected keys \['b'\]"),
        (normcore.RNN, (I, H), {"shape": "W_h"}, r"state_dict\['W_h'\] must have shape \(4, 4\)"),
        (normcore.GroupNorm, (2, 4), {"drop": "bias"}, r"missing keys \['bias'\]"),
        (normcore.GroupNorm, (2, 4), {"shape": "gain"}, r"state_dict\['gain'\] must have shape"),
    ],
    ids=["lstm-missing", "gru-extra", "rnn-shape", "group-missing", "group-shape"],
)
def test_load_state_dict_errors_name_the_key_and_change_nothing(
    backend, rng, cls, args, change, message
):
    obj = cls(*args, like=backend.asarray(np.zeros(1)), dtype="float32")
    before = _snapshot(backend, obj)
    state = _random_state(rng, obj)  # valid new values that must not be applied either
    if "drop" in change:
        del state[change["drop"]]
    if "add" in change:
        state[change["add"]] = np.zeros(3)
    if "shape" in change:
        state[change["shape"]] = np.zeros((7,))
    with pytest.raises(ValueError, match=message):
        obj.load_state_dict(state)
    _assert_unchanged(backend, obj, before)


@pytest.mark.parametrize(
    ("cls", "args", "shape"),
    [(normcore.GroupNorm, (2, 4), (3, 4, 2)), (normcore.LSTM, (I, H), (T, B, I))],
)
def test_to_moves_every_array_between_devices(rng, cls, args, shape):
    strict = pytest.importorskip("array_api_strict")
    device1, device2 = strict.Device("device1"), strict.Device("device2")
    obj = cls(*args, like=strict, device=device1)
    data = rng.normal(size=shape)
    out1 = obj(strict.asarray(data, dtype=strict.float32, device=device1))
    assert obj.to(device2) is obj and obj.device == device2
    assert all(v.device == device2 for v in obj.state_dict().values())
    with pytest.raises(
        ValueError, match=r"are on device .*device2.* but xs? is on device .*device1"
    ):
        obj(strict.asarray(data, dtype=strict.float32, device=device1))
    out2 = obj(strict.asarray(data, dtype=strict.float32, device=device2))
    first = out1[0] if isinstance(out1, tuple) else out1
    second = out2[0] if isinstance(out2, tuple) else out2
    assert second.device == device2
    cpu = strict.Device("CPU_DEVICE")
    np.testing.assert_array_equal(
        np.asarray(second.to_device(cpu)), np.asarray(first.to_device(cpu))
    )


@pytest.mark.parametrize(
    ("make", "data"),
    [
        (lambda: normcore.GroupNorm(2, 4, affine=False), np.ones((2, 4, 3))),
        (lambda: normcore.LSTM(I, H), np.ones((T, B, I))),
    ],
    ids=["GroupNorm", "LSTM"],
)
def test_input_from_another_library_names_the_input_and_the_object(make, data):
    strict = pytest.importorskip("array_api_strict")
    obj = make()
    name = "xs" if isinstance(obj, normcore.LSTM) else "x"
    cls = type(obj).__name__
    with pytest.raises(
        TypeError,
        match=rf"^{name} must be an array of this {cls}'s library \(numpy\), got "
        rf"array_api_strict.* create the {cls} with like={name}",
    ):
        obj(strict.asarray(data, dtype=strict.float32))


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


def test_adam_trains_the_objects(rng):
    """A few Adam steps on an LN-LSTM and a GroupNorm head lower a regression loss."""
    xs = rng.normal(size=(6, 8, 3))
    target = np.cumsum(xs[..., :1], axis=0) / 3  # a running sum the LSTM can track
    lstm = normcore.LSTM(3, 4, dtype="float64", seed=1)
    head = normcore.GroupNorm(2, 4, dtype="float64")
    optimizers = [Adam(lstm, lr=0.05), Adam(head, lr=0.05)]

    def loss_and_grad():
        hs, _ = lstm(xs)
        flat = np.reshape(hs, (-1, 4))
        out = head(flat)[:, :1].reshape(target.shape)
        diff = out - target
        dout = np.zeros_like(flat)
        dout[:, :1] = (2 * diff / diff.size).reshape(-1, 1)
        return float(np.mean(diff**2)), dout

    losses = []
    for _ in range(30):
        loss, dout = loss_and_grad()
        losses.append(loss)
        dflat = head.backward(dout)
        lstm.backward(np.reshape(dflat, (6, 8, 4)))
        for opt in optimizers:
            opt.step()
    assert losses[-1] < 0.5 * losses[0]


def test_repr():
    assert repr(normcore.GroupNorm(2, 4)) == (
        "GroupNorm(2, 4, axis=1, eps=1e-05, affine=True; numpy float32 on cpu)"
    )
    assert repr(normcore.GRU(3, 4, dtype="float64")) == (
        "GRU(3, 4, layer_norm=True, batch_first=False; numpy float64 on cpu)"
    )
    assert repr(normcore.LayerNorm(4)).endswith("; numpy float32 on cpu)")
    assert repr(normcore.BatchNorm(2)).startswith("BatchNorm(gain=(2,), bias=(2,), running_mean")


@pytest.mark.parametrize(
    ("cls", "args", "shape"),
    [
        (normcore.LayerNorm, (4,), (3, 4)),
        (normcore.RMSNorm, (4,), (3, 4)),
        (normcore.GroupNorm, (2, 4), (3, 4, 2)),
        (normcore.BatchNorm, (4,), (3, 4)),
        (normcore.LSTM, (I, H), (T, B, I)),
        (normcore.GRU, (I, H), (T, B, I)),
    ],
    ids=lambda v: getattr(v, "__name__", None),
)
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_objects_copy_and_pickle(backend, rng, cls, args, shape, how):
    """An EMA copy, a best-checkpoint snapshot, multiprocessing: a layer is its arrays."""
    import copy
    import pickle

    x = backend.asarray(rng.normal(size=shape), "float32")
    obj = cls(*args, like=x)
    state = _random_state(rng, obj)
    if cls is normcore.BatchNorm:  # a valid batch norm state
        state.update(running_var=np.abs(state["running_var"]), num_batches_tracked=np.array(7))
    obj.load_state_dict(state)
    obj(x)
    twin = copy.deepcopy(obj) if how == "deepcopy" else pickle.loads(pickle.dumps(obj))
    assert type(twin) is cls and twin.xp is obj.xp
    assert twin.device == obj.device and twin.dtype == obj.dtype
    state, twin_state = obj.state_dict(), twin.state_dict()
    assert list(twin_state) == list(state)
    for name, value in state.items():
        backend.assert_like(twin_state[name], value)
        assert twin_state[name] is not value
        np.testing.assert_array_equal(backend.to_numpy(twin_state[name]), backend.to_numpy(value))
    ours, theirs = obj(x), twin(x)
    ours, theirs = (ours[0], theirs[0]) if isinstance(ours, tuple) else (ours, theirs)
    np.testing.assert_array_equal(backend.to_numpy(theirs), backend.to_numpy(ours))


def test_state_dict_crosses_libraries_from_a_non_host_device(rng):
    """array_api_strict arrays on "device1" load into NumPy and torch objects (via DLPack)."""
    strict = pytest.importorskip("array_api_strict")
    source = normcore.LSTM(I, H, like=strict, device=strict.Device("device1"), layer_norm=True)
    source.load_state_dict(_random_state(rng, source))
    host = {k: np.asarray(v.to_device(strict.Device("CPU_DEVICE"))) for k, v in
            source.state_dict().items()}  # fmt: skip
    for like in ("numpy", "torch"):
        if like == "torch":
            pytest.importorskip("torch")
        target = normcore.LSTM(I, H, like=__import__(like), layer_norm=True)
        target.load_state_dict(source.state_dict())
        for name, value in target.state_dict().items():
            np.testing.assert_array_equal(np.asarray(value), host[name].astype(np.float32))


def test_deepcopy_after_a_backward_through_a_torch_graph():
    """Gradients stored by backward may carry the input's graph; a copy keeps their values."""
    import copy

    torch = pytest.importorskip("torch")
    layer = normcore.LayerNorm(4, like=torch)
    layer(torch.randn(2, 4, requires_grad=True))  # e.g. the output of an upstream torch layer
    layer.backward(torch.ones(2, 4))
    twin = copy.deepcopy(layer)
    for name, grad in layer.grads().items():
        torch.testing.assert_close(twin.grads()[name], grad.detach())
        assert not twin.grads()[name].requires_grad

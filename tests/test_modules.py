"""Behaviour every normcore layer object shares: state dicts, devices, copies, reprs, training."""

from __future__ import annotations

import numpy as np
import pytest
from _support import assert_like, assert_unchanged, random_state, snapshot

import normcore
from normcore.optim import Adam

T, B, I, H = 4, 3, 5, 4  # noqa: E741


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
    before = snapshot(backend, obj)
    state = random_state(rng, obj)  # valid new values that must not be applied either
    if "drop" in change:
        del state[change["drop"]]
    if "add" in change:
        state[change["add"]] = np.zeros(3)
    if "shape" in change:
        state[change["shape"]] = np.zeros((7,))
    with pytest.raises(ValueError, match=message):
        obj.load_state_dict(state)
    assert_unchanged(backend, obj, before)


def _torch_state(name, *args, **kwargs):
    torch = pytest.importorskip("torch")
    module = getattr(normcore.torch if kwargs.get("layer_norm") else torch.nn, name)
    return {k: v.detach() for k, v in module(*args, **kwargs).state_dict().items()}


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (lambda: normcore.BatchNorm(3), lambda: _torch_state("BatchNorm1d", 3)),
        (lambda: normcore.LSTM(I, H), lambda: _torch_state("LSTM", I, H)),
        (lambda: normcore.LSTM(I, H), lambda: _torch_state("LSTM", I, H, layer_norm=True)),
        (
            lambda: normcore.GRU(I, H, layer_norm=False, num_layers=2),
            lambda: _torch_state("GRU", I, H, num_layers=2),
        ),
        (lambda: normcore.GRU(I, H), lambda: _torch_state("GRU", I, H)),
        (lambda: normcore.RNN(I, H, layer_norm=False), lambda: _torch_state("RNN", I, H)),
    ],
    ids=["batch_norm", "lstm-torch.nn", "lstm-normcore.torch", "gru-2-layers", "gru", "rnn"],
)
def test_a_torch_state_dict_points_to_load_torch_state_dict(ours, theirs):
    obj, state = ours(), theirs()
    before = {k: np.array(v) for k, v in obj.state_dict().items()}
    with pytest.raises(ValueError) as info:
        obj.load_state_dict(state)
    message = str(info.value)
    assert message.startswith(f"state_dict does not match {type(obj).__name__}: missing keys")
    assert f"with {type(obj).__name__}.load_torch_state_dict(state) instead" in message
    for key, value in obj.state_dict().items():
        np.testing.assert_array_equal(value, before[key])


@pytest.mark.parametrize("cls", [normcore.LayerNorm, normcore.GroupNorm])
def test_torch_s_weight_key_says_it_is_gain(cls):
    """No load_torch_state_dict there: the message says which key to rename."""
    obj = cls(1, 3) if cls is normcore.GroupNorm else cls(3)
    state = {"weight" if k == "gain" else k: v for k, v in obj.state_dict().items()}
    with pytest.raises(ValueError, match=r"; 'weight' is torch's name of 'gain': rename it"):
        obj.load_state_dict(state)
    renamed = {"gain" if k == "weight" else k: v for k, v in state.items()}
    obj.load_state_dict(renamed)  # the advice works


def test_unrelated_keys_get_no_torch_hint():
    with pytest.raises(ValueError) as info:
        normcore.BatchNorm(3).load_state_dict({"running_mean": np.zeros(3)})
    assert "torch" not in str(info.value)


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
    state = random_state(rng, obj)
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
        assert_like(twin_state[name], value)
        assert twin_state[name] is not value
        np.testing.assert_array_equal(backend.to_numpy(twin_state[name]), backend.to_numpy(value))
    ours, theirs = obj(x), twin(x)
    ours, theirs = (ours[0], theirs[0]) if isinstance(ours, tuple) else (ours, theirs)
    np.testing.assert_array_equal(backend.to_numpy(theirs), backend.to_numpy(ours))


def test_state_dict_crosses_libraries_from_a_non_host_device(rng):
    """array_api_strict arrays on "device1" load into NumPy and torch objects (via DLPack)."""
    strict = pytest.importorskip("array_api_strict")
    source = normcore.LSTM(I, H, like=strict, device=strict.Device("device1"), layer_norm=True)
    source.load_state_dict(random_state(rng, source))
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

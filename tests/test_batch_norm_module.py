"""normcore.BatchNorm: running statistics, atomic updates, state dicts, on every backend."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from _support import assert_close, assert_like

import normcore


def _module_dtype(dtype):
    return "float32" if dtype in ("float16", "bfloat16") else dtype


def _make(backend, dtype, num_features, **kwargs):
    like = backend.asarray(np.zeros(1), dtype)
    return normcore.BatchNorm(num_features, like=like, dtype=_module_dtype(dtype), **kwargs)


def _snapshot(bn):
    return {
        k: np.array(v if isinstance(v, np.ndarray) else _host(v))
        for k, v in bn.state_dict().items()
    }


def _host(a):
    if hasattr(a, "detach"):
        return a.detach().cpu().numpy()
    if type(a).__module__.startswith("array_api_strict"):
        import array_api_strict as strict

        return np.asarray(a.to_device(strict.Device("CPU_DEVICE")))
    return np.asarray(a)


def _assert_unchanged(bn, before):
    after = _snapshot(bn)
    assert after.keys() == before.keys()
    for key in before:
        assert after[key].dtype == before[key].dtype
        np.testing.assert_array_equal(after[key], before[key], strict=True)


@pytest.mark.parametrize("momentum", [0.1, 0.0, 1.0, None])
@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 2, 5)], ids=["1d", "2d"])
def test_running_statistics_match_torch(backend, dtype, rng, momentum, shape):
    torch = pytest.importorskip("torch")
    module = torch.nn.BatchNorm1d if len(shape) == 2 else torch.nn.BatchNorm2d
    ref = module(3, momentum=momentum, dtype=torch.float64)
    with torch.no_grad():
        ref.weight.copy_(torch.tensor(rng.normal(1.0, 0.3, size=3)))
        ref.bias.copy_(torch.tensor(rng.normal(0.0, 0.3, size=3)))
    bn = _make(backend, dtype, 3, momentum=momentum)
    bn.load_torch_state_dict(ref.state_dict())
    for step in range(3):
        x = backend.asarray(rng.normal(step, 1.0 + step, size=shape), dtype)
        y = bn(x)
        assert_like(y, x)
        want = ref.train()(torch.tensor(backend.to_numpy(x)))
        assert_close(backend, y, want.detach().numpy(), dtype)
    ref_state = ref.state_dict()
    for name in ("running_mean", "running_var"):
        assert_close(
            backend, getattr(bn, name), ref_state[name].numpy(), _module_dtype(dtype), scale=10
        )
    assert int(bn.num_batches_tracked) == int(ref_state["num_batches_tracked"]) == 3
    x = backend.asarray(rng.normal(size=shape), dtype)
    want = ref.eval()(torch.tensor(backend.to_numpy(x))).detach().numpy()
    assert_close(backend, bn(x, training=False), want, dtype, scale=10)


@pytest.mark.parametrize("training", [True, False])
def test_backward_matches_torch_autograd(backend, dtype, rng, training):
    torch = pytest.importorskip("torch")
    ref = torch.nn.BatchNorm2d(3, dtype=torch.float64)
    with torch.no_grad():
        ref.weight.copy_(torch.tensor(rng.normal(1.0, 0.3, size=3)))
        ref.running_mean.copy_(torch.tensor(rng.normal(size=3)))
        ref.running_var.copy_(torch.tensor(rng.uniform(0.5, 2, size=3)))
    bn = _make(backend, dtype, 3)
    bn.load_torch_state_dict(ref.state_dict())
    x = backend.asarray(rng.normal(size=(4, 3, 2, 3)), dtype)
    dy = backend.asarray(rng.normal(size=(4, 3, 2, 3)), dtype)
    bn(x, training=training)
    dx = bn.backward(dy)
    assert_like(dx, x)
    xt = torch.tensor(backend.to_numpy(x), requires_grad=True)
    ref.train(training)(xt).backward(torch.tensor(backend.to_numpy(dy)))
    assert_close(backend, dx, xt.grad.numpy(), dtype, scale=10)
    grads = bn.grads()
    assert_close(backend, grads["gain"], ref.weight.grad.numpy(), _module_dtype(dtype), scale=20)
    assert_close(backend, grads["bias"], ref.bias.grad.numpy(), _module_dtype(dtype), scale=20)


def test_backward_uses_the_parameters_of_the_forward_call(backend, rng):
    torch = pytest.importorskip("torch")
    ref = torch.nn.BatchNorm1d(3, dtype=torch.float64)
    with torch.no_grad():
        ref.weight.copy_(torch.tensor([0.5, 2.0, -1.0]))
    bn = _make(backend, "float64", 3)
    bn.load_torch_state_dict(ref.state_dict())
    x = backend.asarray(rng.normal(size=(5, 3)))
    dy = backend.asarray(rng.normal(size=(5, 3)))
    bn(x)
    bn.load_state_dict({**bn.state_dict(), "gain": np.full(3, 7.0)})  # e.g. an optimizer step
    xt = torch.tensor(backend.to_numpy(x), requires_grad=True)
    ref(xt).backward(torch.tensor(backend.to_numpy(dy)))
    assert_close(backend, bn.backward(dy), xt.grad.numpy(), "float64")


def test_autograd_through_the_module_keeps_state_out_of_the_graph():
    torch = pytest.importorskip("torch")
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(5, 3, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    ref_x = x.detach().clone().requires_grad_()
    bn = normcore.BatchNorm(3, like=torch, dtype="float64")
    ref = torch.nn.BatchNorm1d(3, dtype=torch.float64)
    bn(x).pow(3).sum().backward()
    ref(ref_x).pow(3).sum().backward()
    torch.testing.assert_close(x.grad, ref_x.grad, rtol=1e-10, atol=1e-12)
    assert not any(v.requires_grad for v in bn.state_dict().values())
    torch.testing.assert_close(bn.running_var, ref.running_var, rtol=1e-12, atol=0)


def test_keras_convention(backend, rng):
    bn = _make(backend, "float64", 2, convention="keras")
    assert bn.momentum == 0.99
    batches = [rng.normal(3.0, 2.0, size=(5, 2)) for _ in range(3)]
    mean, var = np.zeros(2), np.ones(2)
    for b in batches:
        bn(backend.asarray(b))
        mean = 0.99 * mean + 0.01 * b.mean(axis=0)
        var = 0.99 * var + 0.01 * b.var(axis=0)  # biased
    assert_close(backend, bn.running_mean, mean, "float64")
    assert_close(backend, bn.running_var, var, "float64")
    cumulative = _make(backend, "float64", 2, convention="keras", momentum=None)
    for b in batches:
        cumulative(backend.asarray(b))
    expected = np.mean([b.var(axis=0) for b in batches], axis=0)
    assert_close(backend, cumulative.running_var, expected, "float64")


def test_without_affine_or_running_statistics(backend, rng):
    x_np = rng.normal(size=(5, 3))
    expected = (x_np - x_np.mean(0)) / np.sqrt(x_np.var(0) + 1e-5)
    bn = _make(backend, "float64", 3, affine=False, track_running_stats=False)
    assert bn.state_dict() == {}
    for training in (True, False):  # no running statistics: batch statistics both times
        assert_close(backend, bn(backend.asarray(x_np), training=training), expected, "float64")
    bn.backward(backend.asarray(np.ones((5, 3))))
    assert bn.grads() == {}


def test_channels_last_module(backend, rng):
    x = rng.normal(size=(4, 2, 3, 5))
    first, last = _make(backend, "float64", 5), _make(backend, "float64", 5, axis=-1)
    y_first = first(backend.asarray(np.moveaxis(x, -1, 1)))
    y_last = last(backend.asarray(x))
    assert_close(backend, y_last, np.moveaxis(backend.to_numpy(y_first), 1, -1), "float64")
    assert_close(backend, last.running_var, backend.to_numpy(first.running_var), "float64")


# -- atomicity: a call that raises leaves every array bit-identical -----------------------
def _other_library(backend):
    if backend.library != "numpy":
        return np.ones((4, 3), np.float32)
    return pytest.importorskip("array_api_strict").ones((4, 3))


ATOMIC_CASES = [
    (
        lambda b: b.asarray(np.ones((4, 5)), "float32"),
        ValueError,
        r"num_features=3 values along axis 1, got shape \(4, 5\)",
    ),
    (
        lambda b: b.asarray(np.ones((1, 3)), "float32"),
        ValueError,
        r"expected more than 1 value per channel when training, got input shape \(1, 3\)",
    ),
    (
        lambda b: b.asarray(np.ones((1, 3, 1, 1)), "float32"),
        ValueError,
        r"expected more than 1 value per channel when training, got input shape \(1, 3, 1, 1\)",
    ),
    (
        lambda b: b.asarray(np.ones((4, 3)), "float64"),
        TypeError,
        r"x must have this BatchNorm's dtype .*float32 \(float16/bfloat16 is accepted by a float32 "
        r"BatchNorm\), got .*float64",
    ),
    (lambda b: b.asarray(np.ones(3), "float32"), ValueError, r"x must have at least 2 dimensions"),
    (_other_library, TypeError, r"x must be an array of this BatchNorm's library"),
    (lambda b: [[1.0, 2.0, 3.0]] * 2, TypeError, r"x must be an array"),
]


@pytest.mark.parametrize(("make_x", "error", "message"), ATOMIC_CASES)
def test_failed_call_leaves_state_unchanged(backend, rng, make_x, error, message):
    bn = _make(backend, "float32", 3)
    bn(backend.asarray(rng.normal(size=(6, 3)), "float32"))  # non-trivial state first
    before = _snapshot(bn)
    with pytest.raises(error, match=message):
        bn(make_x(backend))
    _assert_unchanged(bn, before)


@pytest.mark.parametrize("training", ["False", 0, 1.0])
def test_training_must_be_a_bool(backend, rng, training):
    bn = _make(backend, "float32", 3)
    bn(backend.asarray(rng.normal(size=(6, 3)), "float32"))
    before = _snapshot(bn)
    with pytest.raises(TypeError, match=r"^training must be True or False, got"):
        bn(backend.asarray(rng.normal(size=(6, 3)), "float32"), training=training)
    _assert_unchanged(bn, before)


def test_input_on_another_device_names_the_module():
    strict = pytest.importorskip("array_api_strict")
    bn = normcore.BatchNorm(3, like=strict, device=strict.Device("device1"))
    x = strict.ones((4, 3), dtype=strict.float32, device=strict.Device("device2"))
    with pytest.raises(
        ValueError, match=r"^this BatchNorm's arrays are on device .*device1.* but x is on device"
    ):
        bn(x)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf - inf
def test_non_finite_batch_is_skipped_with_a_warning(backend, rng):
    bn = _make(backend, "float64", 3)
    bn(backend.asarray(rng.normal(size=(6, 3))))
    before = _snapshot(bn)
    for bad in (np.nan, np.inf):
        values = rng.normal(size=(6, 3))
        values[2, 1] = bad
        with pytest.warns(RuntimeWarning, match=r"NaN or infinite statistics; the running"):
            y = bn(backend.asarray(values))
        _assert_unchanged(bn, before)
        assert np.isnan(backend.to_numpy(y)[:, 1]).all()
        assert np.isfinite(backend.to_numpy(y)[:, [0, 2]]).all()
    with warnings.catch_warnings():  # the strict policy: the warning as an error
        warnings.simplefilter("error", RuntimeWarning)
        with pytest.raises(RuntimeWarning):
            bn(backend.asarray(np.full((6, 3), np.nan)))
    _assert_unchanged(bn, before)


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("convention", ["torch", "keras"])
def test_device_side_running_update_equals_the_synchronous_one(backend, rng, momentum, convention):
    """``synchronous=False`` (used under torch.compile): same update, a bad batch kept out."""
    from normcore._reference.running import RunningStats, running_update

    def running(tracked):
        mean, var = (backend.asarray(rng.normal(size=3), "float64") for _ in range(2))
        return RunningStats(mean, var * var, backend.asarray(np.array(tracked), "int64"))

    old = running(4)
    batch_mean, batch_var = (backend.asarray(rng.uniform(1, 2, size=3), "float64") for _ in "mv")
    args = (10, batch_mean, batch_var, momentum, convention)
    expected = running_update(old, *args)
    got = running_update(old, *args, synchronous=False)
    for have, want in zip(got, expected, strict=True):
        assert_like(have, want)
        np.testing.assert_allclose(backend.to_numpy(have), backend.to_numpy(want), rtol=1e-14)
    # and both equal the conventions' formulas, written here
    weight = 1 / (4 + 1) if momentum is None else momentum
    weight, var = (
        (weight, backend.to_numpy(batch_var) * 10 / 9)
        if convention == "torch"
        else (1 - weight if momentum is not None else weight, backend.to_numpy(batch_var))
    )
    for have, old_value, batch_value in zip(
        got[:2], old[:2], (backend.to_numpy(batch_mean), var), strict=True
    ):
        want = (1 - weight) * backend.to_numpy(old_value) + weight * batch_value
        np.testing.assert_allclose(backend.to_numpy(have), want, rtol=1e-12)
    assert int(backend.to_numpy(got[2])) == 5
    bad_mean = backend.asarray(np.array([0.0, np.nan, 1.0]), "float64")
    kept = running_update(old, 10, bad_mean, batch_var, momentum, convention, synchronous=False)
    for have, want in zip(kept, old, strict=True):
        np.testing.assert_array_equal(backend.to_numpy(have), backend.to_numpy(want))


def test_one_value_per_channel_works_in_inference(backend):
    bn = _make(backend, "float64", 3)
    y = bn(backend.asarray(np.array([[1.0, 2.0, 3.0]])), training=False)
    assert_close(backend, y, np.array([[1.0, 2.0, 3.0]]) / np.sqrt(1 + 1e-5), "float64")


def test_zero_size_batch(backend):
    bn = _make(backend, "float32", 3)
    before = _snapshot(bn)
    x = backend.asarray(np.zeros((0, 3, 4)), "float32")
    y = bn(x)
    assert_like(y, x)
    _assert_unchanged(bn, before)


def test_backward_needs_a_forward_first(backend):
    with pytest.raises(RuntimeError, match=r"BatchNorm.backward needs a forward call"):
        _make(backend, "float32", 3).backward(backend.asarray(np.ones((2, 3)), "float32"))


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"num_features": 0}, ValueError, r"num_features must be >= 1, got 0"),
        ({"num_features": 2.0}, TypeError, r"num_features must be an int, got float"),
        ({"momentum": 1.5}, ValueError, r"momentum must be in \[0, 1\] or None, got 1.5"),
        ({"momentum": -0.1}, ValueError, r"momentum must be in \[0, 1\] or None, got -0.1"),
        ({"momentum": "0.1"}, TypeError, r"momentum must be a real number or None, got str"),
        (
            {"convention": "flax"},
            ValueError,
            r"convention must be one of \('torch', 'keras'\), got 'flax'",
        ),
        ({"convention": 1}, TypeError, r"convention must be a str, one of .* got int"),
        ({"affine": "no"}, TypeError, r"affine must be True or False, got str"),
        ({"track_running_stats": 1}, TypeError, r"track_running_stats must be True or False"),
        ({"momentum": float("nan")}, ValueError, r"momentum must be in \[0, 1\] or None, got nan"),
        ({"eps": 0}, ValueError, r"eps must be a finite number > 0, got 0"),
        ({"axis": 1.0}, TypeError, r"axis must be an int, got float"),
        ({"dtype": "int32"}, TypeError, r"dtype must be a real floating-point dtype"),
    ],
)
def test_bad_constructor_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        normcore.BatchNorm(**{"num_features": 3, **kwargs})


# -- state dicts -------------------------------------------------------------------------
def test_state_dict_round_trips_through_numpy_savez(backend, rng, tmp_path):
    bn = _make(backend, "float32", 3)
    for _ in range(2):
        bn(backend.asarray(rng.normal(size=(5, 3)), "float32"))
    path = tmp_path / "bn.npz"
    np.savez(path, **{k: _host(v) for k, v in bn.state_dict().items()})
    fresh = _make(backend, "float32", 3)
    with np.load(path) as loaded:
        fresh.load_state_dict(dict(loaded))
    _assert_unchanged(fresh, _snapshot(bn))
    x = backend.asarray(rng.normal(size=(4, 3)), "float32")
    np.testing.assert_array_equal(
        backend.to_numpy(fresh(x, training=False)), backend.to_numpy(bn(x, training=False))
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"running_var": np.array([1.0, -0.5, 1.0])}, r"running_var'\] must be finite and >= 0"),
        ({"running_var": np.array([1.0, np.nan, 1.0])}, r"running_var'\] must be finite and >= 0"),
        ({"running_var": np.array([1.0, np.inf, 1.0])}, r"running_var'\] must be finite and >= 0"),
        ({"running_mean": np.array([0.0, np.nan, 0.0])}, r"running_mean'\] must be finite"),
        ({"running_mean": np.array([0.0, -np.inf, 0.0])}, r"running_mean'\] must be finite"),
        ({"num_batches_tracked": np.array(-1)}, r"num_batches_tracked'\] must be >= 0, got -1"),
        ({"num_batches_tracked": np.array(2.5)}, r"num_batches_tracked'\] must hold finite whole"),
        ({"num_batches_tracked": np.array(np.nan)}, r"num_batches_tracked'\] must hold finite"),
        ({"running_mean": np.zeros(4)}, r"running_mean'\] must have shape \(3,\), got \(4,\)"),
        ({"weight": np.ones(3)}, r"missing keys \['gain'\], unexpected keys \['weight'\]"),
    ],
)
def test_load_state_dict_rejects_bad_state(backend, rng, change, message):
    bn = _make(backend, "float32", 3)
    bn(backend.asarray(rng.normal(size=(5, 3)), "float32"))
    before = _snapshot(bn)
    state = {k: _host(v) for k, v in bn.state_dict().items()}
    state["gain"] = state["gain"] * 2  # a valid change that must not be applied either
    state.update(change)
    if "weight" in change:
        del state["gain"]
    with pytest.raises(ValueError, match=message):
        bn.load_state_dict(state)
    _assert_unchanged(bn, before)


def test_torch_state_dict_import_and_export_give_identical_outputs(backend, rng):
    torch = pytest.importorskip("torch")
    ref = torch.nn.BatchNorm2d(3, dtype=torch.float64)
    for _ in range(2):
        ref.train()(torch.tensor(rng.normal(2.0, 3.0, size=(4, 3, 2, 2))))
    with torch.no_grad():
        ref.weight.copy_(torch.tensor(rng.normal(size=3)))
    bn = _make(backend, "float64", 3)
    bn.load_torch_state_dict(ref.state_dict())
    assert int(bn.num_batches_tracked) == 2
    x_np = rng.normal(size=(5, 3, 2, 2))
    want = ref.eval()(torch.tensor(x_np)).detach().numpy()
    assert_close(backend, bn(backend.asarray(x_np), training=False), want, "float64")

    bn(backend.asarray(rng.normal(size=(6, 3, 2, 2))))  # train further, then export
    exported = torch.nn.BatchNorm2d(3, dtype=torch.float64)
    exported.load_state_dict(
        {k: torch.as_tensor(_host(v)) for k, v in bn.to_torch_state_dict().items()}
    )
    assert sorted(bn.to_torch_state_dict()) == sorted(ref.state_dict())
    want = exported.eval()(torch.tensor(x_np)).detach().numpy()
    assert_close(backend, bn(backend.asarray(x_np), training=False), want, "float64")


def test_a_whole_models_torch_state_dict_gets_a_hint():
    torch = pytest.importorskip("torch")
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), torch.nn.BatchNorm2d(3))
    bn = normcore.BatchNorm(3)
    before = {k: np.array(v) for k, v in bn.state_dict().items()}
    with pytest.raises(
        ValueError, match=r"whole model's state dict \(prefix '1\.'\).*removeprefix"
    ):
        bn.load_torch_state_dict(model.state_dict())
    for name, value in bn.state_dict().items():
        np.testing.assert_array_equal(np.asarray(value), before[name])
    prefix = "1."
    bn.load_torch_state_dict(
        {k.removeprefix(prefix): v for k, v in model.state_dict().items() if k.startswith(prefix)}
    )


def test_train_and_eval_set_the_default_of_each_call(backend, rng):
    bn = _make(backend, "float64", 3, momentum=0.5)
    x = backend.asarray(rng.normal(2.0, 1.0, size=(8, 3)), "float64")
    assert bn.training is True
    assert bn.eval() is bn and bn.training is False
    y = bn(x)  # inference: running statistics (0 and 1), nothing tracked
    assert int(backend.to_numpy(bn.num_batches_tracked)) == 0
    expected = backend.to_numpy(x) / np.sqrt(1.0 + bn.eps)
    assert_close(backend, y, expected, "float64")
    bn(x, training=True)  # an explicit training= still wins
    assert int(backend.to_numpy(bn.num_batches_tracked)) == 1
    assert bn.train() is bn and bn.training is True
    bn(x)
    assert int(backend.to_numpy(bn.num_batches_tracked)) == 2
    bn.train(False)
    assert bn.training is False
    with pytest.raises(TypeError, match=r"^mode must be True or False, got str"):
        bn.train("no")


def test_the_batch_of_one_advice_works(backend):
    """The message advises .eval(): that exists and then normalizes a batch of one."""
    bn = _make(backend, "float64", 3)
    one = backend.asarray(np.ones((1, 3)), "float64")
    with pytest.raises(ValueError, match=r"training=False or \.eval\(\)"):
        bn(one)
    assert bn.eval()(one).shape == (1, 3)


def test_the_mode_survives_copies_and_old_pickles(rng):
    import copy
    import pickle

    bn = normcore.BatchNorm(3).eval()
    assert copy.deepcopy(bn).training is False
    assert pickle.loads(pickle.dumps(bn)).training is False
    state = bn.__getstate__()
    del state["training"]  # as pickled before modules had a mode
    old = normcore.BatchNorm.__new__(normcore.BatchNorm)
    old.__setstate__(state)
    assert old.training is True
    old(rng.normal(size=(4, 3)).astype(np.float32))
    assert int(old.num_batches_tracked) == 1


def test_torch_meta_tensors_give_shapes_like_torch_nn():
    """meta tensors hold no values: the running update stays on the device, as torch.nn's."""
    torch = pytest.importorskip("torch")
    m = torch.empty(4, 3, device="meta")
    bn = normcore.BatchNorm(3, like=m)
    ref = torch.nn.BatchNorm1d(3, device="meta")
    for training in (True, False):
        y, want = bn(m, training=training), ref.train(training)(m)
        assert (y.shape, y.device, y.dtype) == (want.shape, want.device, want.dtype)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        have, want = getattr(bn, name), getattr(ref, name)
        assert (have.shape, have.device, have.dtype) == (want.shape, want.device, want.dtype)
    assert bn.backward(torch.empty(4, 3, device="meta")).shape == (4, 3)
    # momentum=None reads the count on the host elsewhere (torch.nn cannot): here it need not
    cumulative = normcore.BatchNorm(3, like=m, momentum=None)
    assert cumulative(m).device == m.device and cumulative.running_mean.device == m.device

"""normcore.LayerNorm / normcore.RMSNorm: stateful layers on every backend, path and dtype."""

from __future__ import annotations

import numpy as np
import pytest
from _support import (
    assert_close,
    assert_like,
    assert_unchanged,
    reference_layer_norm,
    snapshot,
    torch_layer_norm_grads,
)

import normcore

# (normalized_shape, x shape, axis given to the layer, axes for the references)
LAYOUTS = [
    (7, (4, 7), None, (-1,)),
    ((3, 5), (2, 3, 5), None, (-2, -1)),  # the last two axes, as torch.nn.LayerNorm
    ((3, 4, 5), (2, 3, 4, 5), (1, 2, 3), (1, 2, 3)),  # N x C x H x W as in the paper
    ((5, 4), (3, 4, 5), (2, 1), (2, 1)),  # reversed order: gain is (5, 4)
]
KINDS = {
    "layer": (normcore.LayerNorm, normcore.layer_norm, True, 1e-5),
    "rms": (normcore.RMSNorm, normcore.rms_norm, False, 1e-6),
}


def _layer(kind, backend, dtype, rng, normalized_shape, axis, x):
    """A layer on x's library and device, with random parameters loaded from NumPy."""
    cls, _, center, _ = KINDS[kind]
    layer = cls(normalized_shape, axis=axis, like=x, dtype=backend.dtype(dtype))
    shape = layer.normalized_shape
    state = {"gain": rng.normal(1.0, 0.3, size=shape)}
    if center:
        state["bias"] = rng.normal(0.0, 0.3, size=shape)
    layer.load_state_dict(state)
    return layer


def _state_numpy(backend, layer):
    return {k: backend.to_numpy(v) for k, v in layer.state_dict().items()}


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize(("normalized_shape", "shape", "axis", "axes"), LAYOUTS)
def test_forward_and_backward_match_torch_and_functional(
    backend, dtype, rng, kind, normalized_shape, shape, axis, axes
):
    _, function, center, eps = KINDS[kind]
    x = backend.asarray(rng.normal(0.5, 2.0, size=shape), dtype)
    dy = backend.asarray(rng.normal(size=shape), dtype)
    layer = _layer(kind, backend, dtype, rng, normalized_shape, axis, x)
    gain, bias = layer.gain, layer.bias
    y = layer(x)
    assert_like(y, x)
    params = (gain, bias) if center else (gain,)
    functional = function(x, *params, axis=axes)
    np.testing.assert_array_equal(backend.to_numpy(y), backend.to_numpy(functional))
    state = _state_numpy(backend, layer)
    expected_y, (dx, dgain, dbias) = torch_layer_norm_grads(
        backend.to_numpy(x),
        backend.to_numpy(dy),
        state["gain"],
        state.get("bias"),
        axes,
        eps,
        center,
    )
    assert_close(backend, y, expected_y, dtype)
    assert_close(backend, layer.backward(dy), dx, dtype, scale=4)
    grads = layer.grads()
    assert sorted(grads) == sorted(layer.parameters())
    count = np.sqrt(np.prod(shape) / np.prod(layer.normalized_shape))
    assert_like(grads["gain"], gain)
    assert_close(backend, grads["gain"], dgain, dtype, scale=4 * count)
    if center:
        assert_close(backend, grads["bias"], dbias, dtype, scale=4 * count)


def test_default_parameters_are_one_and_zero(backend):
    x = backend.asarray(np.zeros((2, 3)))
    layer = normcore.LayerNorm(3, like=x)
    assert sorted(layer.parameters()) == ["bias", "gain"]
    np.testing.assert_array_equal(backend.to_numpy(layer.gain), np.ones(3))
    np.testing.assert_array_equal(backend.to_numpy(layer.bias), np.zeros(3))
    assert layer.dtype == backend.dtype("float32")
    assert list(normcore.RMSNorm(3, like=x).parameters()) == ["gain"]


def test_affine_false_has_no_parameters_and_checks_the_shape(backend, rng):
    x = backend.asarray(rng.normal(size=(2, 3, 4)))
    layer = normcore.LayerNorm((3, 4), affine=False, like=x, dtype=x.dtype)
    assert layer.parameters() == {} and layer.state_dict() == {}
    expected = reference_layer_norm(backend.to_numpy(x), axes=(-2, -1))
    assert_close(backend, layer(x), expected, "float64")
    layer.backward(backend.asarray(np.ones((2, 3, 4))))
    assert layer.grads() == {}
    with pytest.raises(ValueError, match=r"x must have shape \(3, 4\) \(normalized_shape\)"):
        layer(backend.asarray(np.ones((2, 4, 3))))


def test_backward_uses_the_parameters_of_the_forward_call(backend, rng):
    x = backend.asarray(rng.normal(size=(2, 3)))
    dy = backend.asarray(rng.normal(size=(2, 3)))
    layer = normcore.LayerNorm(3, like=x, dtype=x.dtype)
    layer.load_state_dict({"gain": np.array([1.0, 2.0, 3.0]), "bias": np.zeros(3)})
    layer(x)
    layer.load_state_dict({"gain": np.full(3, 7.0), "bias": np.zeros(3)})
    _, (dx, _, _) = torch_layer_norm_grads(
        backend.to_numpy(x), backend.to_numpy(dy), np.array([1.0, 2.0, 3.0]), np.zeros(3)
    )
    assert_close(backend, layer.backward(dy), dx, "float64")


def test_backward_needs_a_forward_call():
    with pytest.raises(RuntimeError, match=r"LayerNorm.backward needs a forward call"):
        normcore.LayerNorm(3).backward(np.ones((1, 3), np.float32))


def _trained_layer(backend, rng):
    x = backend.asarray(rng.normal(size=(2, 3)), "float32")
    layer = normcore.LayerNorm(3, like=x)
    layer(x)
    layer.backward(backend.asarray(rng.normal(size=(2, 3)), "float32"))
    return layer


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({"gain": np.ones(3)}, r"missing keys \['bias'\], unexpected keys \[\]"),
        (
            {"gain": np.ones(3), "bias": np.zeros(3), "scale": np.ones(3)},
            r"missing keys \[\], unexpected keys \['scale'\]",
        ),
        ({"gain": np.ones(3), "bias": np.zeros(4)}, r"state_dict\['bias'\] must have shape \(3,\)"),
        ({"gain": np.ones((1, 3)), "bias": np.zeros(3)}, r"state_dict\['gain'\] .* got \(1, 3\)"),
    ],
)
def test_load_state_dict_errors_name_the_key_and_change_nothing(backend, rng, state, message):
    layer = _trained_layer(backend, rng)
    before = snapshot(backend, layer)
    with pytest.raises(ValueError, match=message):
        layer.load_state_dict(state)
    assert_unchanged(backend, layer, before)


@pytest.mark.parametrize(
    "bad",
    [[1.0, 1.0, 1.0], np.array(["a", "b", "c"]), np.ones(3, dtype=np.complex128)],
    ids=["list", "strings", "complex"],
)
def test_load_state_dict_rejects_values_that_are_not_real_arrays(backend, rng, bad):
    layer = _trained_layer(backend, rng)
    before = snapshot(backend, layer)
    with pytest.raises(TypeError, match=r"state_dict\['gain'\] must be an array of real numbers"):
        layer.load_state_dict({"gain": bad, "bias": np.zeros(3)})
    assert_unchanged(backend, layer, before)


def _other_library_array():
    strict = pytest.importorskip("array_api_strict")
    return strict.ones((2, 3), dtype=strict.float32)


@pytest.mark.parametrize(
    ("make_x", "error", "message"),
    [
        (lambda b: [[1.0, 2.0, 3.0]], TypeError, r"^x must be an array .* got list"),
        (
            lambda b: b.xp.ones((2, 3), dtype=b.xp.int64, device=b.device),
            TypeError,
            r"^x must have a real floating-point dtype",
        ),
        (
            lambda b: b.asarray(np.ones((2, 3)), "float64"),
            TypeError,
            r"^x must have this LayerNorm's dtype .*float32 \(float16/bfloat16 is accepted by a "
            r"float32 LayerNorm\), got .*float64",
        ),
        (
            lambda b: b.asarray(np.ones((2, 4)), "float32"),
            ValueError,
            r"^x must have shape \(3,\) \(normalized_shape\) along axis=\(-1,\), got \(4,\)",
        ),
        (
            lambda b: b.xp.asarray(1.0, device=b.device),
            ValueError,
            r"^x must have at least one dimension",
        ),
    ],
    ids=["list", "int64", "float64-vs-float32-params", "wrong-shape", "0-d"],
)
def test_bad_input_raises_like_the_functional_api_and_changes_nothing(
    backend, rng, make_x, error, message
):
    layer = _trained_layer(backend, rng)
    before = snapshot(backend, layer)
    x = make_x(backend)
    with pytest.raises(error, match=message):
        layer(x)
    assert_unchanged(backend, layer, before)


def test_input_from_another_library_is_a_type_error(rng):
    layer = normcore.LayerNorm(3)
    before = snapshot(_numpy_backend(), layer)
    message = (
        r"^x must be an array of this LayerNorm's library \(numpy\), got .*; create the "
        r"LayerNorm with like=x"
    )
    with pytest.raises(TypeError, match=message):
        layer(_other_library_array())
    assert_unchanged(_numpy_backend(), layer, before)


@pytest.mark.parametrize("cls", [normcore.LayerNorm, normcore.RMSNorm])
def test_parameterless_layer_refuses_another_library(cls):
    """Without parameters nothing but the layer itself can notice the library."""
    layer = cls(3, affine=False)
    with pytest.raises(TypeError, match=rf"^x must be an array of this {cls.__name__}'s library"):
        layer(_other_library_array())
    with pytest.raises(TypeError, match=rf"^x must have this {cls.__name__}'s dtype"):
        layer(np.ones((2, 3)))


def _numpy_backend():
    from _support import BACKENDS

    return BACKENDS[0]


def test_bad_dy_raises_and_changes_nothing(backend, rng):
    layer = _trained_layer(backend, rng)
    before = snapshot(backend, layer)
    with pytest.raises(ValueError, match=r"^dy must have x's shape \(2, 3\), got \(3, 2\)"):
        layer.backward(backend.asarray(np.ones((3, 2)), "float32"))
    with pytest.raises(TypeError, match=r"^dy must have dtype"):
        layer.backward(backend.asarray(np.ones((2, 3)), "float64"))
    assert_unchanged(backend, layer, before)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"normalized_shape": 0}, ValueError, r"normalized_shape must contain sizes > 0, got 0"),
        ({"normalized_shape": ()}, TypeError, r"normalized_shape must be a positive int"),
        ({"normalized_shape": 3.0}, TypeError, r"normalized_shape must be .* got 3.0"),
        ({"axis": (1, 2)}, ValueError, r"axis must name 1 axes, .* normalized_shape \(3,\)"),
        ({"eps": 0.0}, ValueError, r"eps must be a finite number > 0, got 0.0"),
        ({"affine": 1}, TypeError, r"affine must be True or False, got int"),
        ({"affine": "no"}, TypeError, r"affine must be True or False, got str"),
        ({"dtype": "int32"}, TypeError, r"dtype must be a real floating-point dtype"),
        ({"like": "numpy"}, TypeError, r"like must be an array or an array library"),
    ],
)
@pytest.mark.parametrize("cls", [normcore.LayerNorm, normcore.RMSNorm])
def test_constructor_errors(cls, kwargs, error, message):
    kwargs = {"normalized_shape": 3, **kwargs}
    with pytest.raises(error, match=message):
        cls(kwargs.pop("normalized_shape"), **kwargs)


@pytest.mark.parametrize("cls", [normcore.LayerNorm, normcore.RMSNorm])
def test_state_round_trips_through_numpy_savez(backend, rng, tmp_path, cls):
    x = backend.asarray(rng.normal(size=(2, 4)), "float32")
    source = cls(4, like=x)
    source.load_state_dict({k: rng.normal(size=4) for k in source.state_dict()})
    path = tmp_path / "state.npz"
    np.savez(path, **{k: backend.to_numpy(v) for k, v in source.state_dict().items()})
    target = cls(4, like=x)
    with np.load(path) as saved:
        target.load_state_dict(dict(saved))
    for name, value in source.state_dict().items():
        assert_like(target.state_dict()[name], value)
        np.testing.assert_array_equal(
            backend.to_numpy(target.state_dict()[name]), backend.to_numpy(value)
        )
    np.testing.assert_array_equal(backend.to_numpy(target(x)), backend.to_numpy(source(x)))


def test_to_moves_every_parameter_between_devices(rng):
    strict = pytest.importorskip("array_api_strict")
    device1, device2 = strict.Device("device1"), strict.Device("device2")
    data = rng.normal(size=(2, 3))
    layer = normcore.LayerNorm(3, like=strict, device=device1)
    assert layer.device == device1
    x1 = strict.asarray(data, dtype=strict.float32, device=device1)
    y1 = layer(x1)
    assert layer.to(device2) is layer
    assert all(v.device == device2 for v in layer.state_dict().values())
    assert layer.device == device2
    message = r"this LayerNorm's arrays are on device .*device2.* but x is on device .*device1"
    with pytest.raises(ValueError, match=message):
        layer(x1)
    y2 = layer(strict.asarray(data, dtype=strict.float32, device=device2))
    assert y2.device == device2
    np.testing.assert_array_equal(
        np.asarray(y2.to_device(strict.Device("CPU_DEVICE"))),
        np.asarray(y1.to_device(strict.Device("CPU_DEVICE"))),
    )

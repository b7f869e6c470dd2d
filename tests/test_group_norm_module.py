"""normcore.GroupNorm: the stateful layer on every backend, path and dtype."""

from __future__ import annotations

import numpy as np
import pytest
from _support import (
    assert_close,
    assert_like,
    assert_unchanged,
    snapshot,
    torch_values_and_grads,
)

import normcore


def _module_dtype(dtype):
    return "float32" if dtype in ("float16", "bfloat16") else dtype


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
    assert_like(y, x)
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
    before = snapshot(backend, layer)
    with pytest.raises(error, match=message):
        layer(make_x(backend))
    with pytest.raises(ValueError, match=r"^dy must have x's shape \(2, 4, 3\)"):
        layer.backward(backend.asarray(np.ones((2, 3, 4)), "float32"))
    assert_unchanged(backend, layer, before)


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

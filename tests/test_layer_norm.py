"""layer_norm / rms_norm and their backward on every backend, path and dtype."""

from __future__ import annotations

import numpy as np
import pytest
from _support import (
    BACKENDS,
    TOLERANCE,
    assert_close,
    assert_grads,
    assert_like,
    finite_difference,
    reference_layer_norm,
    torch_layer_norm_grads,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import normcore

# (shape, axis) pairs covering the paper's layouts and unusual ones.
LAYOUTS = [
    ((4, 7), -1),  # N x D
    ((2, 3, 5), -1),  # B x T x D: per example and per time step
    ((2, 3, 4, 5), (1, 2, 3)),  # N x C x H x W as in the paper
    ((3, 4, 5), (2, 1)),  # reversed order: gain is (5, 4)
    ((4, 6, 3), (0,)),  # a leading axis
    ((5,), 0),  # a single vector
    ((3, 1), -1),  # one unit: output is exactly the bias
]


def _params(rng, backend, dtype, x_shape, axes):
    shape = tuple(x_shape[a] for a in axes)
    gain_np = rng.normal(1.0, 0.3, size=shape)
    bias_np = rng.normal(0.0, 0.3, size=shape)
    return backend.asarray(gain_np, dtype), backend.asarray(bias_np, dtype)


@pytest.mark.parametrize(("shape", "axis"), LAYOUTS)
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_matches_float64_reference(backend, dtype, rng, shape, axis, affine):
    x = backend.asarray(rng.normal(0.5, 2.0, size=shape), dtype)
    axes = axis if isinstance(axis, tuple) else (axis,)
    gain, bias = _params(rng, backend, dtype, shape, axes) if affine else (None, None)
    y = normcore.layer_norm(x, gain, bias, axis=axis)
    assert_like(y, x)
    expected = reference_layer_norm(
        backend.to_numpy(x),
        None if gain is None else backend.to_numpy(gain),
        None if bias is None else backend.to_numpy(bias),
        axes,
    )
    assert_close(backend, y, expected, dtype)


@pytest.mark.parametrize(("shape", "axis"), LAYOUTS)
def test_rms_norm_matches_float64_reference(backend, dtype, rng, shape, axis):
    axes = axis if isinstance(axis, tuple) else (axis,)
    x = backend.asarray(rng.normal(0.5, 2.0, size=shape), dtype)
    gain, _ = _params(rng, backend, dtype, shape, axes)
    y = normcore.rms_norm(x, gain, axis=axis)
    assert_like(y, x)
    expected = reference_layer_norm(
        backend.to_numpy(x), backend.to_numpy(gain), None, axes, eps=1e-6, center=False
    )
    assert_close(backend, y, expected, dtype)


@pytest.mark.parametrize(("shape", "axis"), LAYOUTS)
@pytest.mark.parametrize("center", [True, False], ids=["layer", "rms"])
@pytest.mark.parametrize("given", ["gain+bias", "gain", "bias", "none"])
def test_backward_matches_torch_autograd(backend, dtype, rng, shape, axis, center, given):
    axes = axis if isinstance(axis, tuple) else (axis,)
    x = backend.asarray(rng.normal(0.5, 2.0, size=shape), dtype)
    dy = backend.asarray(rng.normal(size=shape), dtype)
    gain, bias = _params(rng, backend, dtype, shape, axes)
    gain = gain if "gain" in given else None
    bias = bias if "bias" in given else None
    if center:
        grads = normcore.layer_norm_backward(dy, x, gain, bias, axis=axis)
        eps = 1e-5
    else:
        grads = normcore.rms_norm_backward(dy, x, gain, axis=axis)
        bias, eps = None, 1e-6
        assert grads.dbias is None
    _, expected = torch_layer_norm_grads(
        backend.to_numpy(x),
        backend.to_numpy(dy),
        None if gain is None else backend.to_numpy(gain),
        None if bias is None else backend.to_numpy(bias),
        axes,
        eps,
        center,
    )
    assert_grads(backend, dtype, grads, expected, (x, gain, bias), shape)


def test_backward_without_params_returns_none(backend, rng):
    x = backend.asarray(rng.normal(size=(3, 4)))
    grads = normcore.layer_norm_backward(backend.asarray(np.ones((3, 4))), x)
    assert grads.dgain is None and grads.dbias is None
    # dy = 1 everywhere is orthogonal to both directions the backward removes: dx == 0
    assert_close(backend, grads.dx, np.zeros((3, 4)), "float64")


@pytest.mark.parametrize("center", [True, False], ids=["layer", "rms"])
def test_backward_matches_finite_differences(backend, rng, center):
    shape, axis = (3, 2, 4), (2, 1)
    x_np = rng.normal(size=shape)
    dy_np = rng.normal(size=shape)
    gain_np = rng.normal(1.0, 0.5, size=(4, 2))
    x, dy, gain = (backend.asarray(a) for a in (x_np, dy_np, gain_np))
    forward = normcore.layer_norm if center else normcore.rms_norm
    backward = normcore.layer_norm_backward if center else normcore.rms_norm_backward
    grads = backward(dy, x, gain, axis=axis)

    def f_x(v):
        return backend.to_numpy(forward(backend.asarray(v), gain, axis=axis))

    def f_gain(g):
        return backend.to_numpy(forward(x, backend.asarray(g), axis=axis))

    np.testing.assert_allclose(
        backend.to_numpy(grads.dx), finite_difference(f_x, x_np, dy_np), rtol=1e-6, atol=1e-7
    )
    np.testing.assert_allclose(
        backend.to_numpy(grads.dgain),
        finite_difference(f_gain, gain_np, dy_np),
        rtol=1e-6,
        atol=1e-7,
    )


def test_large_mean_keeps_float32_accuracy(backend, rng):
    """Mean 1e4, std 1 in float32: E[x^2]-E[x]^2 would lose every digit here."""
    x_np = (1e4 + rng.normal(size=(64, 256))).astype(np.float32)
    x64 = x_np.astype(np.float64)
    y = normcore.layer_norm(backend.asarray(x_np, "float32"))
    expected = reference_layer_norm(x64)
    ours = np.abs(backend.to_numpy(y) - expected).max()
    # A float32 mean of values near 1e4 is a multiple of ulp(1e4) = 2**-10 and a
    # float32 sum of 256 of them adds a few such roundings, so y = (x - mean) / std
    # may be off by a few ulp(1e4) / std (torch's F.layer_norm: about 1.5 of them);
    # E[x^2] - E[x]^2 in float32 cancels all of the variance's digits (errors ~1e3).
    bound = 4 * float(np.spacing(np.float32(1e4))) / x64.std(axis=-1).min()
    assert ours <= bound, (ours, bound)
    torch = pytest.importorskip("torch")
    theirs = np.abs(
        torch.nn.functional.layer_norm(torch.from_numpy(x_np), (256,)).double().numpy() - expected
    ).max()
    assert ours <= theirs * 1.01 + 1e-6, (ours, theirs)


def test_constant_rows_give_exactly_the_bias(backend, dtype, rng):
    values = np.array([0.1, -3.7, 1e4, 0.0])[:, None] * np.ones((4, 9))
    x = backend.asarray(values, dtype)
    bias_np = rng.normal(size=9)
    gain, bias = backend.asarray(rng.normal(size=9), dtype), backend.asarray(bias_np, dtype)
    y = normcore.layer_norm(x, gain, bias)
    expected = np.broadcast_to(backend.to_numpy(bias), (4, 9))
    np.testing.assert_array_equal(backend.to_numpy(y), expected)
    grads = normcore.layer_norm_backward(
        backend.asarray(rng.normal(size=(4, 9)), dtype), x, gain, bias
    )
    for g in grads:
        assert np.all(np.isfinite(backend.to_numpy(g)))


def test_nan_stays_in_its_row(backend, dtype, rng):
    values = rng.normal(size=(3, 5))
    values[1, 2] = np.nan
    y = backend.to_numpy(normcore.layer_norm(backend.asarray(values, dtype)))
    assert np.all(np.isnan(y[1]))
    assert np.all(np.isfinite(y[[0, 2]]))


@pytest.mark.parametrize("shape", [(0, 5), (4, 0), (0,)])
def test_zero_size_input_returns_empty(backend, shape):
    x = backend.asarray(np.zeros(shape))
    gain = backend.asarray(np.ones(shape[-1:]))
    y = normcore.layer_norm(x, gain, gain)
    assert_like(y, x)
    grads = normcore.layer_norm_backward(x, x, gain, gain)
    assert_like(grads.dx, x)
    assert_like(grads.dgain, gain)
    assert np.all(backend.to_numpy(grads.dgain) == 0)


def test_inputs_are_not_modified(backend, dtype, rng):
    arrays = [backend.asarray(rng.normal(size=s), dtype) for s in ((4, 6), (6,), (6,), (4, 6))]
    before = [backend.to_numpy(a).copy() for a in arrays]
    x, gain, bias, dy = arrays
    normcore.layer_norm(x, gain, bias)
    normcore.layer_norm_backward(dy, x, gain, bias)
    normcore.rms_norm_backward(dy, x, gain)
    for a, b in zip(arrays, before, strict=True):
        np.testing.assert_array_equal(backend.to_numpy(a), b)


def test_low_precision_input_accepts_float32_params(backend, rng):
    low = next((d for d in ("bfloat16", "float16") if d in backend.dtypes), None)
    if low is None:
        pytest.skip(f"{backend.name} has no float16/bfloat16")
    x = backend.asarray(rng.normal(size=(4, 8)), low)
    gain = backend.asarray(rng.normal(size=8), "float32")
    y = normcore.layer_norm(x, gain, gain)
    assert_like(y, x)
    expected = reference_layer_norm(
        backend.to_numpy(x), backend.to_numpy(gain), backend.to_numpy(gain)
    )
    assert_close(backend, y, expected, low, scale=2)
    grads = normcore.layer_norm_backward(backend.asarray(np.ones((4, 8)), low), x, gain, gain)
    assert grads.dgain.dtype == gain.dtype and grads.dx.dtype == x.dtype


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_random_shapes_and_axes_match_torch(data):
    """Hypothesis: any shape, any set of axes in any order, NumPy and torch agree with torch."""
    ndim = data.draw(st.integers(1, 4))
    shape = tuple(data.draw(st.lists(st.integers(1, 5), min_size=ndim, max_size=ndim)))
    axes = tuple(data.draw(st.permutations(range(ndim)))[: data.draw(st.integers(1, ndim))])
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    x, dy = rng.normal(size=shape), rng.normal(size=shape)
    gain = rng.normal(size=tuple(shape[a] for a in axes))
    values, grads = torch_layer_norm_grads(x, dy, gain, gain, axes)
    torch = pytest.importorskip("torch")
    for convert in (np.asarray, torch.from_numpy):
        args = [convert(a) for a in (x, gain)]
        y = normcore.layer_norm(args[0], args[1], args[1], axis=axes)
        np.testing.assert_allclose(np.asarray(y), values, rtol=1e-10, atol=1e-10)
        got = normcore.layer_norm_backward(convert(dy), args[0], args[1], args[1], axis=axes)
        for g, w in zip(got, grads, strict=True):  # dx, dgain and dbias
            np.testing.assert_allclose(np.asarray(g), w, rtol=1e-9, atol=1e-9)


def test_moments_is_stable_and_matches_numpy(backend, dtype, rng):
    values = 1e3 + rng.normal(size=(5, 6, 7))
    x = backend.asarray(values, dtype)
    x64 = backend.to_numpy(x)
    for axis, correction in (((0, 2), 0), (-1, 1), (None, 1)):
        mean, var = normcore.moments(x, axis=axis, correction=correction)
        np_axis = axis
        assert_like(mean, x, shape=np.mean(x64, axis=np_axis).shape)
        assert_close(backend, mean, np.mean(x64, axis=np_axis), dtype, scale=1e3)
        assert_close(backend, var, np.var(x64, axis=np_axis, ddof=correction), dtype, scale=10)
    mean, var = normcore.moments(x, axis=1, keepdims=True)
    assert tuple(mean.shape) == (5, 1, 7) == tuple(var.shape)


def test_default_tolerances_cover_every_dtype():
    assert {dtype for backend in BACKENDS for dtype in backend.dtypes} <= set(TOLERANCE)

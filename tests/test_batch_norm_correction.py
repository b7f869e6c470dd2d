"""batch_norm's ``correction``: normalizing with the unbiased batch variance (Ba et al.)."""

from __future__ import annotations

import numpy as np
import pytest
from _support import assert_close, assert_like, finite_difference, torch_values_and_grads

import normcore

# (shape, axis): N x D at the paper's small batch, N x C x H x W, channels-last
LAYOUTS = [((4, 5), 1), ((3, 2, 2, 3), 1), ((2, 3, 4), -1)]


def _expected(x, dy, gain, bias, axis, correction, eps=1e-5):
    """Float64 forward and gradients by torch autograd through ``var(correction=...)``."""
    torch = pytest.importorskip("torch")
    dims = tuple(a for a in range(x.ndim) if a != axis % x.ndim)
    shape = [1] * x.ndim
    shape[axis] = -1

    def fn(t, g, b):
        var, mean = torch.var_mean(t, dim=dims, correction=correction, keepdim=True)
        return (t - mean) / torch.sqrt(var + eps) * g.reshape(shape) + b.reshape(shape)

    return torch_values_and_grads(fn, dy, x, gain, bias)


@pytest.mark.parametrize(("shape", "axis"), LAYOUTS)
@pytest.mark.parametrize("correction", [1, 0.5])
def test_forward_and_backward_match_torch_autograd(backend, dtype, rng, shape, axis, correction):
    channels = shape[axis]
    x_np, dy_np = rng.normal(0.5, 2.0, size=shape), rng.normal(size=shape)
    g_np, b_np = rng.normal(1.0, 0.3, size=channels), rng.normal(size=channels)
    x, dy, gain, bias = (backend.asarray(a, dtype) for a in (x_np, dy_np, g_np, b_np))
    y = normcore.batch_norm(x, gain, bias, axis=axis, correction=correction)
    grads = normcore.batch_norm_backward(dy, x, gain, bias, axis=axis, correction=correction)
    want_y, want_grads = _expected(x_np, dy_np, g_np, b_np, axis, correction)
    assert_like(y, x)
    assert_close(backend, y, want_y, dtype)
    count = int(np.prod(shape)) // channels
    for got, want, like in zip(grads, want_grads, (x, gain, bias), strict=True):
        assert_like(got, like)
        assert_close(backend, got, want, dtype, scale=4 * np.sqrt(count))


def test_unbiased_variance_rescales_the_biased_output_by_sqrt_of_bessel(rng):
    x = rng.normal(size=(4, 6))
    biased = normcore.batch_norm(x, eps=1e-12)
    unbiased = normcore.batch_norm(x, eps=1e-12, correction=1)
    np.testing.assert_allclose(unbiased, biased * np.sqrt(3 / 4), rtol=1e-10)
    np.testing.assert_allclose(np.var(unbiased, axis=0, ddof=1), 1.0, rtol=1e-10)


def test_backward_equals_finite_differences(backend, rng):
    x_np, dy_np = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    gain = backend.asarray(rng.normal(size=3))
    grads = normcore.batch_norm_backward(
        backend.asarray(dy_np), backend.asarray(x_np), gain, correction=1
    )

    def f(v):
        return backend.to_numpy(normcore.batch_norm(backend.asarray(v), gain, correction=1))

    np.testing.assert_allclose(
        backend.to_numpy(grads.dx), finite_difference(f, x_np, dy_np), rtol=1e-6, atol=1e-7
    )


def test_torch_autograd_through_batch_norm_with_correction():
    torch = pytest.importorskip("torch")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    gain = torch.randn(3, generator=gen, dtype=torch.float64, requires_grad=True)
    for path in (True, False):
        with normcore.reference_path(path):
            assert torch.autograd.gradcheck(
                lambda a, g: normcore.batch_norm(a, g, correction=1), (x, gain)
            )


def test_batchnorm_object_normalizes_with_the_correction_and_keeps_its_convention(rng):
    x = rng.normal(2.0, 3.0, size=(4, 5))
    dy = rng.normal(size=(4, 5))
    bn = normcore.BatchNorm(5, correction=1, dtype="float64", momentum=1.0)
    y = bn(x)
    values, grads = _expected(x, dy, np.ones(5), np.zeros(5), 1, 1)
    np.testing.assert_allclose(y, values, rtol=1e-12, atol=1e-12)
    # torch convention: the running variance stores the unbiased batch variance either way
    np.testing.assert_allclose(bn.running_var, np.var(x, axis=0, ddof=1), rtol=1e-12)
    np.testing.assert_allclose(bn.running_mean, x.mean(axis=0), rtol=1e-12)
    dx = bn.backward(dy)
    np.testing.assert_allclose(dx, grads[0], rtol=1e-10, atol=1e-12)
    keras = normcore.BatchNorm(5, correction=1, dtype="float64", momentum=0.0, convention="keras")
    keras(x)
    np.testing.assert_allclose(keras.running_var, np.var(x, axis=0), rtol=1e-12)
    # inference uses the running statistics; the correction plays no part
    np.testing.assert_allclose(
        bn(x, training=False),
        (x - x.mean(axis=0)) / np.sqrt(np.var(x, axis=0, ddof=1) + 1e-5),
        rtol=1e-12,
    )
    bn.backward(dy)  # after inference: constant statistics, no correction involved


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda b: normcore.batch_norm(b.asarray(np.ones((2, 3))), correction=2),
            ValueError,
            r"correction must be >= 0 and less than the number of values reduced \(2\), got 2",
        ),
        (
            lambda b: normcore.batch_norm_backward(
                b.asarray(np.ones((2, 3))), b.asarray(np.ones((2, 3))), correction=-1
            ),
            ValueError,
            r"correction must be >= 0 and less than the number of values reduced \(2\), got -1",
        ),
        (
            lambda b: normcore.batch_norm(b.asarray(np.ones((2, 3))), correction="1"),
            TypeError,
            r"correction must be a real number, got str",
        ),
        (
            lambda b: normcore.batch_norm(
                b.asarray(np.ones((2, 3))),
                mean=b.asarray(np.zeros(3)),
                var=b.asarray(np.ones(3)),
                correction=1,
            ),
            ValueError,
            r"correction applies to batch statistics only; with mean and var given it must be 0, "
            r"got 1",
        ),
    ],
)
def test_bad_correction(backend, call, error, message):
    with pytest.raises(error, match=message):
        call(backend)


def test_batchnorm_object_rejects_bad_corrections():
    with pytest.raises(ValueError, match=r"correction must be a finite number >= 0, got -1"):
        normcore.BatchNorm(3, correction=-1)
    with pytest.raises(TypeError, match=r"correction must be a real number, got NoneType"):
        normcore.BatchNorm(3, correction=None)
    bn = normcore.BatchNorm(3, correction=4, dtype="float64")
    before = {k: np.copy(v) for k, v in bn.state_dict().items()}
    with pytest.raises(ValueError, match=r"less than the number of values reduced \(4\), got 4"):
        bn(np.ones((4, 3)))
    for key, value in bn.state_dict().items():
        np.testing.assert_array_equal(value, before[key])

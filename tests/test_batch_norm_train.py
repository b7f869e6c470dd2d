"""normcore.batch_norm_train: one batch-norm training step as a pure function, on every backend.

Expected values: the batch-norm formula in float64 NumPy and the running
updates of the conventions written out here, never normcore's own output.
"""

from __future__ import annotations

import numpy as np
import pytest
from _support import assert_close, assert_like

import normcore

SHAPE, AXIS = (6, 3, 4), 1  # N x C x L, statistics over N and L


def _running(backend, dtype, mean, var, tracked):
    xp = backend.xp
    return normcore.RunningStats(
        backend.asarray(mean, dtype),
        backend.asarray(var, dtype),
        xp.asarray(tracked, dtype=xp.int32, device=backend.device),
    )


def _expected(x, mean, var, tracked, momentum, convention):
    axes = (0, 2)
    batch_mean = x.mean(axis=axes)
    biased = x.var(axis=axes)
    count = x.size // x.shape[AXIS]
    if momentum is None:
        w = 1.0 / (tracked + 1)
    else:
        w = momentum if convention == "torch" else 1.0 - momentum
    batch_var = biased * count / (count - 1) if convention == "torch" else biased
    return (1 - w) * mean + w * batch_mean, (1 - w) * var + w * batch_var


@pytest.mark.parametrize(
    ("momentum", "convention"), [(0.1, "torch"), (0.99, "keras"), (None, "torch")]
)
def test_output_and_new_running_statistics(backend, dtype, rng, momentum, convention):
    x_np = rng.normal(0.5, 2.0, size=SHAPE)
    gain_np, bias_np = rng.normal(1.0, 0.3, size=3), rng.normal(0.0, 0.3, size=3)
    mean_np, var_np = rng.normal(size=3), rng.uniform(0.5, 2.0, size=3)
    x = backend.asarray(x_np, dtype)
    # the comparisons use the inputs as rounded to dtype
    x_np, gain_np, bias_np, mean_np, var_np = (
        backend.to_numpy(backend.asarray(a, dtype))
        for a in (x_np, gain_np, bias_np, mean_np, var_np)
    )
    gain, bias = backend.asarray(gain_np, dtype), backend.asarray(bias_np, dtype)
    running = _running(backend, dtype, mean_np, var_np, 3)
    y, new = normcore.batch_norm_train(
        x, running, gain, bias, axis=AXIS, momentum=momentum, convention=convention
    )
    shape = (1, 3, 1)
    xhat = (x_np - x_np.mean(axis=(0, 2), keepdims=True)) / np.sqrt(
        x_np.var(axis=(0, 2), keepdims=True) + 1e-5
    )
    assert_like(y, x)
    assert_close(backend, y, xhat * gain_np.reshape(shape) + bias_np.reshape(shape), dtype, 10)
    want_mean, want_var = _expected(x_np, mean_np, var_np, 3, momentum, convention)
    assert_like(new.mean, running.mean)
    assert_close(backend, new.mean, want_mean, dtype, 10)
    assert_close(backend, new.var, want_var, dtype, 10)
    assert int(new.num_batches_tracked) == 4
    # nothing was assigned: the arrays passed in still hold the old values
    np.testing.assert_array_equal(backend.to_numpy(running.mean), mean_np)
    np.testing.assert_array_equal(backend.to_numpy(running.var), var_np)
    assert int(running.num_batches_tracked) == 3


def test_a_non_finite_batch_leaves_the_running_statistics(backend, dtype, rng):
    x_np = rng.normal(size=SHAPE)
    x_np[2, 1, 0] = np.nan
    running = _running(backend, dtype, np.zeros(3), np.ones(3), 5)
    y, new = normcore.batch_norm_train(backend.asarray(x_np, dtype), running)
    np.testing.assert_array_equal(backend.to_numpy(new.mean), np.zeros(3))
    np.testing.assert_array_equal(backend.to_numpy(new.var), np.ones(3))
    assert int(new.num_batches_tracked) == 5
    assert np.isnan(backend.to_numpy(y)[:, 1]).all()


@pytest.mark.parametrize(
    ("running", "error", "message"),
    [
        (lambda b: (b.asarray(np.zeros(3)),), TypeError, r"running must be a RunningStats"),
        (
            lambda b: normcore.RunningStats(
                b.asarray(np.zeros(2)), b.asarray(np.ones(3)), b.xp.asarray(0, device=b.device)
            ),
            ValueError,
            r"running.mean must have shape \(3,\)",
        ),
        (
            lambda b: normcore.RunningStats(
                np.zeros(3) if b.library != "numpy" else [0.0] * 3,
                b.asarray(np.ones(3)),
                b.xp.asarray(0, device=b.device),
            ),
            TypeError,
            r"running.mean must be an array of the same library as x",
        ),
        (
            lambda b: normcore.RunningStats(
                b.asarray(np.zeros(3)), b.asarray(np.ones(3)), b.asarray(0.0)
            ),
            TypeError,
            r"running.num_batches_tracked must have dtype integral",
        ),
    ],
    ids=["not-three", "shape", "library", "count-dtype"],
)
def test_bad_running_statistics(backend, running, error, message):
    x = backend.asarray(np.ones((4, 3)) + np.arange(4)[:, None])
    with pytest.raises(error, match=message):
        normcore.batch_norm_train(x, running(backend))


def test_bad_momentum_and_convention():
    x = np.arange(8.0).reshape(4, 2)
    running = normcore.RunningStats(np.zeros(2), np.ones(2), np.asarray(0))
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\]"):
        normcore.batch_norm_train(x, running, momentum=1.5)
    with pytest.raises(ValueError, match=r"convention must be one of"):
        normcore.batch_norm_train(x, running, convention="flax")


def test_a_jitted_training_step_with_jax():
    """The whole step under jax.jit, with grad of a loss with respect to gain and bias."""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    rng = np.random.default_rng(5)
    with jax.enable_x64(True):
        x = jnp.asarray(rng.normal(size=SHAPE))
        gain, bias = jnp.asarray(rng.normal(1.0, 0.3, size=3)), jnp.zeros(3)
        running = normcore.RunningStats(jnp.zeros(3), jnp.ones(3), jnp.asarray(0))

        def loss(params, running, x):
            y, new = normcore.batch_norm_train(x, running, *params)
            return jnp.sum(y**3), new

        step = jax.jit(jax.value_and_grad(loss, has_aux=True))
        (value, new), grads = step((gain, bias), running, x)
        want_mean, want_var = _expected(np.asarray(x), 0.0, 1.0, 0, 0.1, "torch")
        np.testing.assert_allclose(np.asarray(new.mean), want_mean, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(np.asarray(new.var), want_var, rtol=1e-12, atol=1e-12)
        assert int(new.num_batches_tracked) == 1
        # d/dbias sum(y^3) = 3 * sum of y^2 per channel; d/dgain = 3 * sum(y^2 * xhat)
        xn = np.asarray(x)
        xhat = (xn - xn.mean(axis=(0, 2), keepdims=True)) / np.sqrt(
            xn.var(axis=(0, 2), keepdims=True) + 1e-5
        )
        y = xhat * np.asarray(gain).reshape(1, 3, 1)
        np.testing.assert_allclose(float(value), np.sum(y**3), rtol=1e-12)
        np.testing.assert_allclose(np.asarray(grads[1]), 3 * np.sum(y**2, axis=(0, 2)), rtol=1e-10)
        np.testing.assert_allclose(
            np.asarray(grads[0]), 3 * np.sum(y**2 * xhat, axis=(0, 2)), rtol=1e-10
        )

"""Overflow-free statistics: any finite input normalizes to the exact result, on every path.

A statistic taken over values near a dtype's largest (1e30 in float32, 1e300
in float64, 6e4 in float16) has squares beyond the dtype's range, although
the normalized output is O(1). Expected values come from a float64 NumPy
reference that divides each statistic's values by their largest magnitude
first (normalization does not change when values and ``eps`` are divided by
the same factor), written here independently of normcore. The same inputs go
through every backend, code path and dtype of the shared table, forward and
backward (the functional backward, and autograd where the library has it),
and a hypothesis sweep draws the scales of each row.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pytest
from _support import TOLERANCE, assert_like
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import normcore

EPS = 1e-5
# Per dtype: magnitudes whose squares (summed over a statistic) leave the range of the
# accumulation dtype, and tiny ones, mixed with ordinary rows in the same array.
HUGE = {"float16": 6e4, "bfloat16": 1e38, "float32": 1e30, "float64": 1e300}
LARGEST = {"float16": 6.5e4, "bfloat16": 3.3e38, "float32": 3.4e38, "float64": 1.7e308}
TINY = {"float16": 1e-4, "bfloat16": 1e-30, "float32": 1e-30, "float64": 1e-300}
# Gradients of values near the largest are near the smallest normal number, where a
# subnormal result keeps fewer digits (and XLA on the CPU flushes it to zero): results are
# compared to within a few of the smallest subnormal (JAX: normal) numbers as well.
SUBNORMAL = {"float16": 6e-8, "bfloat16": 9.2e-41, "float32": 1.4e-45, "float64": 4.9e-324}
NORMAL = {"float16": 6.2e-5, "bfloat16": 1.2e-38, "float32": 1.2e-38, "float64": 2.3e-308}


class Method(NamedTuple):
    """One normalization: its calls and its geometry in the reference's terms."""

    forward: object  # (x, gain, bias) -> y
    backward: object  # (dy, x, gain, bias) -> Gradients
    shape: tuple[int, ...]
    grouped: tuple[int, ...]  # x reshaped so that statistics are over reduce
    reduce: tuple[int, ...]
    params: int  # the axis of x that gain and bias span
    center: bool = True  # False: RMS norm, which has no bias
    along: int = 0  # the axis along which the test varies the scale of the values


METHODS = {
    "layer_norm": Method(
        lambda x, g, b: normcore.layer_norm(x, g, b, eps=EPS),
        lambda dy, x, g, b: normcore.layer_norm_backward(dy, x, g, b, eps=EPS),
        (6, 3, 8),
        (6, 3, 8),
        (2,),
        2,
    ),
    "rms_norm": Method(
        lambda x, g, b: normcore.rms_norm(x, g, eps=EPS),
        lambda dy, x, g, b: normcore.rms_norm_backward(dy, x, g, eps=EPS),
        (6, 3, 8),
        (6, 3, 8),
        (2,),
        2,
        center=False,
    ),
    "batch_norm": Method(
        lambda x, g, b: normcore.batch_norm(x, g, b, eps=EPS),
        lambda dy, x, g, b: normcore.batch_norm_backward(dy, x, g, b, eps=EPS),
        (6, 3, 8),
        (6, 3, 8),
        (0, 2),
        1,
        along=1,
    ),
    "group_norm": Method(
        lambda x, g, b: normcore.group_norm(x, 2, g, b, eps=EPS),
        lambda dy, x, g, b: normcore.group_norm_backward(dy, x, 2, g, b, eps=EPS),
        (6, 4, 8),
        (6, 2, 2, 8),
        (2, 3),
        1,
    ),
    "instance_norm": Method(
        lambda x, g, b: normcore.instance_norm(x, g, b, eps=EPS),
        lambda dy, x, g, b: normcore.instance_norm_backward(dy, x, g, b, eps=EPS),
        (6, 4, 8),
        (6, 4, 8),
        (2,),
        1,
    ),
}


def exact(method: Method, x, dy, gain, bias):
    """Float64 ``(y, dx, dgain, dbias)`` with each statistic's values pre-scaled by their max.

    With ``s`` the largest magnitude of a statistic's values (at least one), ``u = x / s``
    is normalized with ``eps / s**2`` (which may underflow to 0 next to the
    scaled variance: it is then negligible); ``rstd = 1 / (s * sqrt(var_u +
    eps / s**2))`` is formed without the square of ``s``. A constant statistic
    (variance 0) has ``rstd = 1 / sqrt(eps)``.
    """
    shape = x.shape
    x, dy = x.reshape(method.grouped), dy.reshape(method.grouped)
    axes = method.reduce
    pshape = [1] * len(shape)
    pshape[method.params] = shape[method.params]
    g = gain.reshape(-1)
    b = bias.reshape(-1) if method.center else np.zeros_like(g)
    s = np.maximum(np.max(np.abs(x), axis=axes, keepdims=True), 1.0)  # tiny rows: as they are
    u = x / s
    c = u - u.mean(axis=axes, keepdims=True) if method.center else u
    var = np.mean(c * c, axis=axes, keepdims=True)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        scaled_rstd = 1.0 / np.sqrt(var + EPS / s / s)
        rstd = np.where(var > 0, scaled_rstd / s, 1.0 / np.sqrt(EPS))
        xhat = np.where(c == 0, 0.0, c * scaled_rstd)  # a constant huge row: 0 * inf
    g_full = g.reshape(pshape) if method.grouped == shape else g.reshape(1, 2, 2, 1)
    b_full = b.reshape(pshape) if method.grouped == shape else b.reshape(1, 2, 2, 1)
    y = xhat * g_full + b_full
    dxhat = dy * g_full
    projection = np.mean(dxhat * xhat, axis=axes, keepdims=True)
    inner = dxhat - xhat * projection
    if method.center:
        inner = inner - np.mean(dxhat, axis=axes, keepdims=True)
    dx = rstd * inner
    others = tuple(a for a in range(x.ndim) if g_full.shape[a] == 1)
    dgain = np.sum(dy * xhat, axis=others).reshape(-1)
    dbias = np.sum(dy, axis=others).reshape(-1)
    return y.reshape(shape), dx.reshape(shape), dgain, dbias


def assert_close_per_statistic(backend, method, got, want, dtype, scale=1.0):
    """``got`` within ``dtype``'s tolerance of ``want``, relative to each statistic's largest.

    Rows of 1e-30 and of 1e30 sit in one array; their gradients differ by
    sixty orders of magnitude, so each statistic is compared on its own scale.
    """
    got = backend.to_numpy(got).reshape(method.grouped)
    expected = np.asarray(want).reshape(method.grouped)
    size = np.max(np.abs(expected), axis=method.reduce, keepdims=True)
    floor = 4 * (NORMAL if backend.library == "jax" else SUBNORMAL)[dtype]
    assert np.isfinite(got).all()
    excess = np.abs(got - expected) - TOLERANCE[dtype] * scale * size
    assert np.max(excess) <= floor, np.max(excess / np.where(size > 0, size, 1.0))


def _inputs(backend, dtype, method, rng, row_scales):
    """x with each sample (each channel, for batch norm) scaled by ``row_scales``."""
    shape, along = method.shape, method.along
    scales = np.resize(np.asarray(row_scales, np.float64), shape[along])
    bshape = [1] * len(shape)
    bshape[along] = shape[along]
    x_np = rng.normal(size=shape) * scales.reshape(bshape)
    # values a little inside the dtype's range (the normal draw may exceed one scale)
    x_np = np.clip(x_np, -LARGEST[dtype] / 2, LARGEST[dtype] / 2)
    if x_np.ndim == 3:
        x_np[0, 0] = x_np[0, 0, :1]  # one constant row (statistic): normalizes to the bias
    channels = shape[method.params]
    g_np, b_np = rng.normal(1.0, 0.3, channels), rng.normal(size=channels)
    dy_np = rng.normal(size=shape)
    x, dy, gain, bias = (backend.asarray(a, dtype) for a in (x_np, dy_np, g_np, b_np))
    # the reference sees the values as rounded to the dtype
    return (x, dy, gain, bias), tuple(backend.to_numpy(a) for a in (x, dy, gain, bias))


def _check(backend, dtype, method, arrays, values):
    x, dy, gain, bias = arrays
    y_want, *exact_grads = exact(method, *values)
    y = method.forward(x, gain, bias)
    assert_like(y, x)
    assert_close_per_statistic(backend, method, y, y_want, dtype)
    grads = method.backward(dy, x, gain, bias)
    assert_like(grads.dx, x)
    _check_grads(backend, dtype, method, (grads.dx, grads.dgain, grads.dbias), values, exact_grads)
    if backend.autograd:
        dx, dgain = _autograd(backend, method, x, dy, gain, bias)
        _check_grads(backend, dtype, method, (dx, dgain), values, exact_grads[:2])


def _check_grads(backend, dtype, method, grads, values, expected):
    x, _, gain, _ = values
    assert_close_per_statistic(backend, method, grads[0], expected[0], dtype, scale=4)
    count = int(np.prod(x.shape)) // x.shape[method.params]
    tol = TOLERANCE[dtype] * 4 * np.sqrt(count)
    for got, want in zip(grads[1:], expected[1:], strict=True):
        if got is None and not method.center:  # RMS norm: no bias, no dbias
            continue
        assert tuple(got.shape) == gain.shape
        np.testing.assert_allclose(backend.to_numpy(got), want, rtol=tol, atol=tol)


def _autograd(backend, method, x, dy, gain, bias):
    """``d sum(y * dy) / d(x, gain)`` by the library's own autodiff."""
    if backend.library == "torch":
        xt, gt = (a.detach().requires_grad_() for a in (x, gain))
        method.forward(xt, gt, bias).backward(dy)
        return xt.grad, gt.grad
    import jax

    _, vjp = jax.vjp(lambda a, g: method.forward(a, g, bias), x, gain)
    return vjp(dy)


@pytest.mark.parametrize("name", list(METHODS))
def test_huge_tiny_and_ordinary_statistics_in_one_array(backend, dtype, rng, name):
    method = METHODS[name]
    scales = (HUGE[dtype], 1.0, TINY[dtype], LARGEST[dtype] / 4)
    _check(backend, dtype, method, *_inputs(backend, dtype, method, rng, scales))


@pytest.mark.parametrize("name", ["layer_norm", "batch_norm"])
def test_ordinary_data_is_unchanged_by_the_overflow_guard(backend, dtype, rng, name):
    """Where nothing overflows, the guarded computation gives the plain one's results."""
    method = METHODS[name]
    _check(backend, dtype, method, *_inputs(backend, dtype, method, rng, (1.0, 3.0, 0.1)))


def test_batch_norm_statistics_beyond_the_range_are_reported_not_stored(rng):
    """The normalization is exact; a variance beyond float32 is inf in the returned stats."""
    x = (rng.normal(size=(8, 3)) * 1e30).astype(np.float32)
    bn = normcore.BatchNorm(3, dtype="float32")
    with pytest.warns(RuntimeWarning, match="left unchanged"):
        y = bn(x)
    np.testing.assert_allclose(np.std(y, axis=0), 1.0, rtol=1e-3)
    np.testing.assert_array_equal(bn.state_dict()["running_var"], np.ones(3, np.float32))


# Layouts that reach the NumPy kernels' other code paths: rows longer than one block
# (segmented statistics), and channels-last batch norm.
KERNEL_METHODS = {
    "layer_norm-long-rows": Method(
        lambda x, g, b: normcore.layer_norm(x, g, b, eps=EPS),
        lambda dy, x, g, b: normcore.layer_norm_backward(dy, x, g, b, eps=EPS),
        (3, 70_000),
        (3, 70_000),
        (1,),
        1,
    ),
    "rms_norm-long-rows": Method(
        lambda x, g, b: normcore.rms_norm(x, g, eps=EPS),
        lambda dy, x, g, b: normcore.rms_norm_backward(dy, x, g, eps=EPS),
        (3, 70_000),
        (3, 70_000),
        (1,),
        1,
        center=False,
    ),
    "batch_norm-channels-last": Method(
        lambda x, g, b: normcore.batch_norm(x, g, b, axis=-1, eps=EPS),
        lambda dy, x, g, b: normcore.batch_norm_backward(dy, x, g, b, axis=-1, eps=EPS),
        (64, 5, 3),
        (64, 5, 3),
        (0, 1),
        2,
        along=2,
    ),
    **{k: METHODS[k] for k in ("layer_norm", "rms_norm", "batch_norm")},
}


@pytest.mark.parametrize("name", list(KERNEL_METHODS))
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("use_numba", [False, True], ids=["numpy-kernels", "numba-kernels"])
def test_both_numpy_kernel_sets(monkeypatch, rng, name, dtype, use_numba):
    """The NumPy and the numba kernels decline overflowing statistics to the reference.

    The pool's threads share calls from 2**16 values here (normally 2**20), so that
    the long rows also run the threaded code.
    """
    from normcore.backends import _numpy_kernels
    from normcore.backends.numpy import adapter

    from normcore._plumbing import config
    from normcore._tools.backends import by_name

    if use_numba:
        pytest.importorskip("numba", reason="numba is not installed (extra 'numba')")
    monkeypatch.setattr(config.settings, "numba", use_numba)
    monkeypatch.setattr(adapter, "small_channels", 0)
    monkeypatch.setattr(_numpy_kernels, "_PARALLEL_MIN", 1 << 16)
    method = KERNEL_METHODS[name]
    backend = by_name("numpy")
    scales = (HUGE[dtype], 1.0, TINY[dtype], LARGEST[dtype] / 4)
    _check(backend, dtype, method, *_inputs(backend, dtype, method, rng, scales))


@settings(
    max_examples=6,
    derandomize=True,  # the same draws on every run: CI is reproducible
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_hypothesis_sweep_of_scales(backend, dtype, data):
    """Each sample's magnitude drawn over the dtype's whole range (10**-30 ... its largest)."""
    name = data.draw(st.sampled_from(sorted(METHODS)), label="method")
    method = METHODS[name]
    lowest = {"float16": -4.0, "float64": -300.0}.get(dtype, -30.0)
    highest = float(np.log10(LARGEST[dtype] / 4))
    exponents = data.draw(
        st.lists(st.floats(lowest, highest), min_size=6, max_size=6), label="log10 scales"
    )
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    scales = 10.0 ** np.array(exponents)
    _check(backend, dtype, method, *_inputs(backend, dtype, method, rng, scales))


@pytest.mark.parametrize("name", ["layer_norm", "group_norm", "instance_norm", "batch_norm"])
def test_torch_compile_traces_the_branch_free_statistics(rng, name):
    """torch.compile(fullgraph=True) of normcore.torch modules: no value is read on the host."""
    torch = pytest.importorskip("torch")
    import normcore.torch as nt
    from normcore._tools.backends import by_name

    torch._dynamo.reset()

    method = METHODS[name]
    layer = {
        "layer_norm": lambda: nt.LayerNorm(8, eps=EPS),
        "group_norm": lambda: nt.GroupNorm(2, 4, eps=EPS),
        "instance_norm": lambda: nt.InstanceNorm1d(4, eps=EPS, affine=True),
        "batch_norm": lambda: nt.BatchNorm1d(3, eps=EPS, track_running_stats=False),
    }[name]()
    with torch.no_grad():  # parameters away from their initial ones and zeros
        layer.weight.copy_(torch.tensor(rng.normal(1.0, 0.3, layer.weight.shape)))
        layer.bias.copy_(torch.tensor(rng.normal(size=layer.bias.shape)))
    backend = by_name("torch-cpu")
    (x, dy, _, _), _ = _inputs(backend, "float32", method, rng, (1e30, 1.0, 1e-30))
    x.requires_grad_()
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    y = compiled(x)
    y.backward(dy)
    values = [backend.to_numpy(a) for a in (x, dy, layer.weight, layer.bias)]
    want_y, want_dx, _, _ = exact(method, *values)
    assert_close_per_statistic(backend, method, y, want_y, "float32")
    assert_close_per_statistic(backend, method, x.grad, want_dx, "float32", scale=4)

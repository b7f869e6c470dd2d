"""Shapes at the boundaries of the adapters' fast kernels, on every backend and path.

The NumPy kernels switch strategy with size (threads above 2**16 elements,
row segments above 2**16 values, channel "row mode" for inner extents >= 128,
column tiles for channels-last data); the shared suite's small shapes never
reach those branches. Each case compares against float64 references computed
by PyTorch's own kernels on the same (rounded) inputs. NumPy arrays run these
shapes through both kernel sets, the NumPy ones and the numba ones (skipped
without numba), selected with the setting NORMCORE_NUMBA sets (``config.settings.numba``).
"""

from __future__ import annotations

import contextlib
import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from _support import assert_close, assert_like, torch_layer_norm_grads
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from normcore.backends import numpy as numpy_adapter

import normcore
from normcore._plumbing import config

torch = pytest.importorskip("torch")

ROWS = [(3, 70_000), (520, 256), (1, 5)]


@pytest.fixture(autouse=True, scope="module")
def _kernels_at_every_size():
    """The batch-norm kernels serve small inputs here too (normally the reference does),
    and the pool's threads share calls from 2**16 elements (normally from 2**20), so
    that these shapes run the threaded code."""
    from normcore.backends import _numpy_kernels

    before = numpy_adapter.adapter.small_channels, _numpy_kernels._PARALLEL_MIN
    numpy_adapter.adapter.small_channels, _numpy_kernels._PARALLEL_MIN = 0, 1 << 16
    yield
    numpy_adapter.adapter.small_channels, _numpy_kernels._PARALLEL_MIN = before


CHANNELS = [((8, 4, 16, 16), 1), ((20_000, 3), -1), ((2, 70_000, 2), 1), ((4, 3, 5), 1)]


@pytest.fixture(params=["numpy-kernels", "numba-kernels"])
def kernels(request, backend, monkeypatch):
    """Kernel set behind NumPy's fast path; other libraries run once."""
    use_numba = request.param == "numba-kernels"
    if use_numba:
        if backend.library != "numpy":
            pytest.skip("only NumPy arrays reach the numba kernels")
        pytest.importorskip("numba", reason="numba cannot be imported")
    monkeypatch.setattr(config.settings, "numba", use_numba)
    return request.param


def _dtype_scale(dtype: str, count: int) -> float:
    """Sums over ``count`` rounded terms: error grows like sqrt(count) ulps."""
    return 4 * np.sqrt(count) if dtype in ("float16", "bfloat16") else 4 * np.sqrt(count) / 8


@pytest.mark.parametrize("shape", ROWS, ids=str)
def test_layer_norm_kernel_shapes(backend, kernels, dtype, rng, shape):
    x = backend.asarray(1e2 + 3 * rng.normal(size=shape), dtype)
    dy = backend.asarray(rng.normal(size=shape), dtype)
    gain = backend.asarray(rng.normal(1, 0.2, size=shape[-1:]), dtype)
    bias = backend.asarray(rng.normal(size=shape[-1:]), dtype)
    y = normcore.layer_norm(x, gain, bias)
    grads = normcore.layer_norm_backward(dy, x, gain, bias)
    values, expected = torch_layer_norm_grads(*(backend.to_numpy(a) for a in (x, dy, gain, bias)))
    assert_like(y, x)
    assert_close(backend, y, values, dtype, scale=4)
    assert_close(backend, grads.dx, expected[0], dtype, scale=4)
    for got, want in zip(grads[1:], expected[1:], strict=True):
        assert_close(backend, got, want, dtype, scale=_dtype_scale(dtype, shape[0]) * 4)


def _torch_batch_norm(x, dy, gain, bias, axis):
    xt = torch.tensor(np.moveaxis(x, axis, 1), requires_grad=True)
    params = [torch.tensor(p, requires_grad=True) for p in (gain, bias)]
    y = torch.nn.functional.batch_norm(xt, None, None, *params, training=True, eps=1e-5)
    y.backward(torch.tensor(np.moveaxis(dy, axis, 1)))
    return [np.moveaxis(t.detach().numpy(), 1, axis) for t in (y, xt.grad)] + [
        p.grad.numpy() for p in params
    ]


@pytest.mark.parametrize(("shape", "axis"), CHANNELS, ids=str)
def test_batch_norm_kernel_shapes(backend, kernels, dtype, rng, shape, axis):
    channels = shape[axis]
    x = backend.asarray(-50 + 2 * rng.normal(size=shape), dtype)
    dy = backend.asarray(rng.normal(size=shape), dtype)
    gain = backend.asarray(rng.normal(1, 0.2, size=channels), dtype)
    bias = backend.asarray(rng.normal(size=channels), dtype)
    y = normcore.batch_norm(x, gain, bias, axis=axis)
    grads = normcore.batch_norm_backward(dy, x, gain, bias, axis=axis)
    expected = _torch_batch_norm(
        *(backend.to_numpy(a) for a in (x, dy, gain, bias)), axis % len(shape)
    )
    assert_like(y, x)
    count = int(np.prod(shape)) // channels
    assert_close(backend, y, expected[0], dtype, scale=4)
    assert_close(backend, grads.dx, expected[1], dtype, scale=4)
    for got, want in zip(grads[1:], expected[2:], strict=True):
        assert_close(backend, got, want, dtype, scale=_dtype_scale(dtype, count) * 4)


@pytest.mark.parametrize(
    ("shape", "axis"),
    [((4096, 4096), -1), ((64, 64, 64, 64), 1), ((16384, 1024), None)],
    ids=["NHWC-C4096", "NCHW", "rows-D1024"],
)
def test_numpy_fast_paths_allocate_no_full_size_temporaries(shape, axis):
    """Extra peak memory (beyond the outputs) stays a small fraction of the input.

    At the performance targets' size (2**24 float32 values) the targets allow
    0.25x extra for a forward and 1.25x for a backward; the kernels need under
    0.1x. A kernel that kept partial statistics for every tile once needed
    0.57x here. Memory, unlike time, is deterministic, so this is a test.
    """
    import tracemalloc

    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    dy = np.ones_like(x)
    channels = shape[-1] if axis in (None, -1) else shape[axis]
    gain = np.ones(channels, np.float32)
    if axis is None:
        forward = lambda: normcore.layer_norm(x, gain, gain)  # noqa: E731
        backward = lambda: normcore.layer_norm_backward(dy, x, gain, gain)  # noqa: E731
    else:
        forward = lambda: normcore.batch_norm(x, gain, gain, axis=axis)  # noqa: E731
        backward = lambda: normcore.batch_norm_backward(dy, x, gain, gain, axis=axis)  # noqa: E731
    for call, outputs in ((forward, x.nbytes), (backward, x.nbytes)):
        call()  # warm up: thread pool, scratch buffers
        tracemalloc.start()
        try:
            call()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak - outputs <= 0.15 * x.nbytes, (peak - outputs) / x.nbytes


def test_numba_kernels_are_the_default(monkeypatch):
    """numba's kernels unless NORMCORE_NUMBA=0 (the setting off); a missing numba warns."""
    monkeypatch.setattr(config.settings, "numba", False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # turned off on purpose: no warning
        assert numpy_adapter._kernels().__name__.endswith("._numpy_kernels")
    monkeypatch.setattr(config.settings, "numba", config.Settings().numba)
    try:
        import numba  # noqa: F401
    except ImportError:
        numpy_adapter._kernel_module.cache_clear()
        with pytest.warns(RuntimeWarning, match=r"numba cannot be imported .* NORMCORE_NUMBA=0"):
            assert numpy_adapter._kernels().__name__.endswith("._numpy_kernels")
    else:
        assert numpy_adapter._kernels().__name__.endswith("._numba_kernels")


def test_numba_kernels_never_start_numbas_own_threads(monkeypatch):
    """The kernels run on normcore's pool: numba's OpenMP/TBB threads (which spin) never start."""
    pytest.importorskip("numba", reason="numba cannot be imported")
    from numba.np.ufunc import parallel

    monkeypatch.setattr(config.settings, "numba", True)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 1024)).astype(np.float32)  # large enough to be spread
    normcore.layer_norm_backward(x, normcore.layer_norm(x))
    channels = x.reshape(16, 32, 32, 32)
    normcore.batch_norm_backward(channels, normcore.batch_norm(channels, axis=1), axis=1)
    normcore.batch_norm(channels, axis=-1)
    assert numpy_adapter.adapter.kernel_set() == "numba"
    assert not parallel._is_initialized


def test_a_broken_numba_falls_back_with_its_error_in_the_warning(monkeypatch):
    """numba present but failing to import (e.g. built for another NumPy): NumPy kernels."""
    import builtins

    real_import = builtins.__import__

    def broken_numba(name, *args, **kwargs):
        if name == "numba":
            raise AttributeError("module 'numpy' has no attribute 'long'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(config.settings, "numba", True)
    monkeypatch.setattr(builtins, "__import__", broken_numba)
    numpy_adapter._kernel_module.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match=r"cannot be imported \(AttributeError: mod"):
            assert numpy_adapter._kernels().__name__.endswith("._numpy_kernels")
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # once per process, not on every call
            assert numpy_adapter._kernels().__name__.endswith("._numpy_kernels")
    finally:  # the next test decides again, with numba importable
        numpy_adapter._kernel_module.cache_clear()


@pytest.mark.parametrize(
    "first_call",
    [
        lambda x: normcore.layer_norm(x),
        lambda x: normcore.LayerNorm(x.shape[-1])(x),
        lambda x: normcore.group_norm(x, 2, axis=-1),
    ],
    ids=["layer_norm", "LayerNorm-module", "group_norm"],
)
def test_the_missing_numba_warning_points_at_the_users_line(monkeypatch, first_call):
    """Not inside normcore, however many of its frames lie between (a fixed stacklevel did)."""
    monkeypatch.setattr(config.settings, "numba", True)
    monkeypatch.setitem(sys.modules, "numba", None)  # import numba raises ImportError
    numpy_adapter._kernel_module.cache_clear()
    x = np.random.default_rng(0).normal(size=(64, 256)).astype(np.float32)
    try:
        with pytest.warns(RuntimeWarning, match="numba cannot be imported") as record:
            first_call(x)
    finally:
        numpy_adapter._kernel_module.cache_clear()
    assert [w.filename for w in record] == [__file__]


def test_threads_making_their_first_call_at_once_warn_once(monkeypatch):
    import builtins
    import time

    real_import = builtins.__import__

    def slow_failing_numba(name, *args, **kwargs):  # a window in which all four try it
        if name == "numba":
            time.sleep(0.05)
            raise ImportError("No module named 'numba'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(config.settings, "numba", True)
    monkeypatch.setattr(builtins, "__import__", slow_failing_numba)
    numpy_adapter._kernel_module.cache_clear()
    start = threading.Barrier(4)

    def first_call():
        start.wait()
        return numpy_adapter._kernels()

    try:
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            with ThreadPoolExecutor(4) as pool:
                chosen = list(pool.map(lambda _: first_call(), range(4)))
    finally:
        numpy_adapter._kernel_module.cache_clear()
    assert all(m.__name__.endswith("._numpy_kernels") for m in chosen)
    assert len([w for w in record if "numba cannot be imported" in str(w.message)]) == 1


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kernel_set", ["0", "1"])
def test_kernels_constant_and_nan_rows(monkeypatch, dtype, kernel_set):
    """A constant row/channel gives exactly the bias; a NaN row stays isolated."""
    if kernel_set == "1":
        pytest.importorskip("numba", reason="numba cannot be imported")
    monkeypatch.setattr(config.settings, "numba", kernel_set == "1")
    rng = np.random.default_rng(3)
    x = (1e3 + rng.normal(size=(6, 300))).astype(dtype)
    x[1] = 1e3 + 0.1
    x[4, 7] = np.nan
    gain = rng.normal(1, 0.2, size=300).astype(dtype)
    bias = rng.normal(size=300).astype(dtype)
    y = normcore.layer_norm(x, gain, bias)
    np.testing.assert_array_equal(y[1], bias)
    assert np.isnan(y[4]).all()
    healthy = [0, 2, 3, 5]
    x64 = x[healthy].astype(np.float64)
    centred = x64 - x64.mean(axis=1, keepdims=True)
    expected = centred / np.sqrt((centred**2).mean(axis=1, keepdims=True) + 1e-5) * gain + bias
    tol = 1e-4 if dtype == "float32" else 1e-11
    np.testing.assert_allclose(y[healthy], expected, rtol=tol, atol=tol)
    xc = (-50 + rng.normal(size=(16, 3, 40))).astype(dtype)
    xc[:, 2] = -49.5
    bc = rng.normal(size=3).astype(dtype)
    yc = normcore.batch_norm(xc, None, bc, axis=1)
    np.testing.assert_array_equal(yc[:, 2], np.full((16, 40), bc[2]))
    xl = np.ascontiguousarray(np.moveaxis(xc, 1, -1))  # channels-last
    yl = normcore.batch_norm(xl, None, bc, axis=-1)
    np.testing.assert_array_equal(yl[..., 2], np.full((16, 40), bc[2]))


def _kernel_cases(rng, dtype):
    """Calls reaching every branch of the kernels: RMS, one parameter, given stats, inf."""
    x = (3 + rng.normal(size=(70, 130))).astype(dtype)
    dy = rng.normal(size=x.shape).astype(dtype)
    g = rng.normal(1, 0.2, size=130).astype(dtype)
    with_inf = x.copy()
    with_inf[3, 0], with_inf[5, 7] = np.inf, -np.inf
    xc = (-5 + rng.normal(size=(8, 6, 33))).astype(dtype)
    dyc = rng.normal(size=xc.shape).astype(dtype)
    # channels-last (N x C, axis -1): the kernels' separate (A, C) branch
    xl = np.ascontiguousarray(np.moveaxis(xc, 1, -1)).reshape(-1, 6)
    dyl = np.ascontiguousarray(np.moveaxis(dyc, 1, -1)).reshape(-1, 6)
    c = rng.normal(size=6).astype(dtype)
    mean, var = (2 + rng.normal(size=6)).astype(dtype), rng.uniform(0.5, 2, size=6).astype(dtype)
    return {
        "rms": lambda: normcore.rms_norm(x, g),
        "rms-backward": lambda: normcore.rms_norm_backward(dy, x, g),
        "rms-no-gain-backward": lambda: normcore.rms_norm_backward(dy, x),
        "layer-bias-only": lambda: normcore.layer_norm(x, None, g),
        "layer-bias-only-backward": lambda: normcore.layer_norm_backward(dy, x, None, g),
        "layer-gain-only-backward": lambda: normcore.layer_norm_backward(dy, x, g),
        "rms-inf": lambda: normcore.rms_norm(with_inf, g),
        "layer-inf": lambda: normcore.layer_norm(with_inf, g, g),
        "batch-given-stats": lambda: normcore.batch_norm(xc, c, c, mean=mean, var=var),
        "batch-given-stats-backward": lambda: normcore.batch_norm_backward(
            dyc, xc, c, c, mean=mean, var=var
        ),
        "batch-gain-only-backward": lambda: normcore.batch_norm_backward(dyc, xc, c),
        "channels-last": lambda: normcore.batch_norm(xl, c, c, axis=-1),
        "channels-last-backward": lambda: normcore.batch_norm_backward(dyl, xl, c, c, axis=-1),
        "channels-last-given-stats": lambda: normcore.batch_norm(
            xl, c, c, axis=-1, mean=mean, var=var
        ),
        "channels-last-given-stats-backward": lambda: normcore.batch_norm_backward(
            dyl, xl, None, c, axis=-1, mean=mean, var=var
        ),
    }


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf rows
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("kernel_set", ["0", "1"], ids=["numpy-kernels", "numba-kernels"])
def test_kernel_sets_match_the_reference_on_every_branch(monkeypatch, dtype, kernel_set):
    """Both NumPy kernel sets against the reference path, output by output (NaN where it is)."""
    if kernel_set == "1":
        pytest.importorskip("numba", reason="numba cannot be imported")
    monkeypatch.setattr(config.settings, "numba", kernel_set == "1")
    tol = {"float16": 4e-3, "float32": 2e-5, "float64": 1e-11}[dtype]
    for name, call in _kernel_cases(np.random.default_rng(7), dtype).items():
        fast = call()
        with normcore.reference_path():
            reference = call()
        pairs = (
            zip(fast, reference, strict=True) if isinstance(fast, tuple) else [(fast, reference)]
        )
        for got, want in pairs:
            if want is None:
                assert got is None, name
                continue
            assert got.dtype == want.dtype, name
            np.testing.assert_allclose(
                got.astype(np.float64), want.astype(np.float64), rtol=tol, atol=tol * 10,
                equal_nan=True, err_msg=name,
            )  # fmt: skip


@pytest.mark.parametrize(("shape", "axis"), [((6, 5, 300), 1), ((1800, 5), -1)], ids=str)
def test_numba_channel_statistics_across_sub_blocks(monkeypatch, shape, axis):
    """Tiny numba sub-blocks: many Chan merges per task, in both channel layouts."""
    numba_kernels = pytest.importorskip(
        "normcore.backends._numba_kernels", reason="numba cannot be imported"
    )
    monkeypatch.setattr(config.settings, "numba", True)
    monkeypatch.setattr(numba_kernels, "_SUB_BLOCK", 7)
    rng = np.random.default_rng(11)
    spread_shape = [1] * len(shape)
    spread_shape[axis] = shape[axis]
    spread = rng.uniform(0.5, 2, size=spread_shape)
    x = (1e3 + rng.normal(size=shape) * spread).astype(np.float32)
    dy = rng.normal(size=shape).astype(np.float32)
    y = normcore.batch_norm(x, axis=axis)
    grads = normcore.batch_norm_backward(dy, x, axis=axis)
    expected = _torch_batch_norm(
        x.astype(np.float64), dy.astype(np.float64), np.ones(shape[axis]),
        np.zeros(shape[axis]), axis % x.ndim,
    )  # fmt: skip
    np.testing.assert_allclose(y, expected[0], rtol=0, atol=2e-4)
    np.testing.assert_allclose(grads.dx, expected[1], rtol=0, atol=2e-4)


@pytest.mark.parametrize(
    "method", ["layer", "batch-channels-first", "batch-channels-last"], ids=str
)
def test_numba_kernels_normalize_float32_beyond_float32_squares(monkeypatch, method):
    """Deviations near 1e20: float32 squares overflow, numba's float64 sums do not."""
    pytest.importorskip("numba", reason="numba cannot be imported")
    monkeypatch.setattr(config.settings, "numba", True)
    row = np.array([1e20, -1e20, 3e19, 0.0, 2e19, -5e19], np.float32)
    rows = np.stack([row, row[::-1]])  # (2, 6): layer norm over each row
    x, axes = {
        "layer": (rows, -1),
        "batch-channels-last": (np.ascontiguousarray(rows.T), 0),  # (N=6, C=2)
        "batch-channels-first": (np.repeat(rows.T[:, :, None], 2, axis=2), (0, 2)),  # (6, 2, 2)
    }[method]
    x64 = x.astype(np.float64)
    centred = x64 - x64.mean(axis=axes, keepdims=True)
    expected = centred / np.sqrt((centred**2).mean(axis=axes, keepdims=True) + 1e-5)
    if method == "layer":
        y = normcore.layer_norm(x)
        dx = normcore.layer_norm_backward(np.ones_like(x), x).dx
    else:
        y = normcore.batch_norm(x, axis=1)
        dx = normcore.batch_norm_backward(np.ones_like(x), x, axis=1).dx
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, np.zeros_like(x), atol=1e-24)  # d(sum y)/dx is 0


@contextlib.contextmanager
def _kernel_set(value):
    """The numba setting for the block (hypothesis tests cannot take monkeypatch)."""
    before = config.settings.numba
    config.settings.numba = value == "1"
    try:
        yield
    finally:
        config.settings.numba = before


def _fast_and_reference(call):
    """``call()`` on the fast path and on the reference path (None for what is None)."""
    fast = call()
    with normcore.reference_path():
        reference = call()
    return fast, reference


@settings(max_examples=30, deadline=None)
@given(data=st.data())
@pytest.mark.parametrize("kernel_set", ["0", "1"], ids=["numpy-kernels", "numba-kernels"])
def test_random_contiguous_layouts_match_the_reference(kernel_set, data):
    """Hypothesis: shapes, channel axes, dtypes and data scales through a kernel set."""
    if kernel_set == "1":
        pytest.importorskip("numba", reason="numba cannot be imported")
    ndim = data.draw(st.integers(2, 4))
    sizes = st.one_of(st.integers(1, 6), st.sampled_from([17, 130, 300]))
    shape = tuple(data.draw(st.lists(sizes, min_size=ndim, max_size=ndim)))
    if np.prod(shape) > 200_000:
        shape = shape[:1] + tuple(min(n, 6) for n in shape[1:])
    dtype = data.draw(st.sampled_from(["float32", "float64"]))
    method = data.draw(st.sampled_from(["layer", "rms", "batch"]))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    offset, spread = data.draw(st.sampled_from([(0.0, 1.0), (1e3, 1.0), (-50.0, 1e-2)]))
    x = (offset + spread * rng.normal(size=shape)).astype(dtype)
    dy = rng.normal(size=shape).astype(dtype)
    if method == "batch":
        axis = data.draw(st.integers(1, ndim - 1) | st.just(-1))
        assume(np.prod(shape) > shape[axis])  # training needs 2+ values per channel
        params = rng.normal(1, 0.2, size=shape[axis]).astype(dtype)
        forward = lambda: normcore.batch_norm(x, params, params, axis=axis)  # noqa: E731
        backward = lambda: normcore.batch_norm_backward(dy, x, params, params, axis=axis)  # noqa: E731
    else:
        axes = tuple(range(ndim - data.draw(st.integers(1, ndim - 1)), ndim))
        params = rng.normal(1, 0.2, size=tuple(shape[a] for a in axes)).astype(dtype)
        if method == "layer":
            forward = lambda: normcore.layer_norm(x, params, params, axis=axes)  # noqa: E731
            backward = lambda: normcore.layer_norm_backward(dy, x, params, params, axis=axes)  # noqa: E731
        else:
            forward = lambda: normcore.rms_norm(x, params, axis=axes)  # noqa: E731
            backward = lambda: normcore.rms_norm_backward(dy, x, params, axis=axes)  # noqa: E731
    tol = 2e-4 if dtype == "float32" else 1e-10
    with _kernel_set(kernel_set):
        y, y_ref = _fast_and_reference(forward)
        grads, grads_ref = _fast_and_reference(backward)
    np.testing.assert_allclose(y, y_ref, rtol=tol, atol=tol)
    for got, want in zip(grads, grads_ref, strict=True):
        if want is None:
            assert got is None
            continue
        assert got.dtype == want.dtype and got.shape == want.shape
        scale = max(1.0, float(np.abs(want).max()))  # dgain/dbias are sums over the batch
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale)


def _spied_numba_kernel(monkeypatch, name):
    """The numba kernels in force, with ``name`` wrapped: the list it returns grows by
    one entry per call (skips without numba)."""
    numba_kernels = pytest.importorskip(
        "normcore.backends._numba_kernels", reason="numba cannot be imported"
    )
    monkeypatch.setattr(config.settings, "numba", True)
    ran = []
    real = getattr(numba_kernels, name)
    monkeypatch.setattr(numba_kernels, name, lambda *a, **k: ran.append(1) or real(*a, **k))
    return ran


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the NaN group
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_numba_group_norm_forward_matches_the_reference(monkeypatch, dtype):
    """Group norm's rows kernel: each (example, group) a row, per-channel gain and bias.

    A constant group gives exactly its bias; a NaN stays in its group; float64
    values near 1e200 (squares overflow) make the kernel decline, and the
    reference's scaled statistics answer. The spy counts the kernel's calls.
    """
    ran = _spied_numba_kernel(monkeypatch, "groups_forward")
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(3, 12, 5, 4)) * 2 + 7).astype(dtype)
    x[1, 4:8] = 1e4  # example 1, group 1 (of 3): constant
    x[2, 0, 1, 1] = np.nan  # example 2, group 0
    gain, bias = rng.normal(size=12).astype(dtype), rng.normal(size=12).astype(dtype)
    huge = (rng.normal(size=(2, 6, 3)) * 1e200).astype("float64")
    cases = [(x, gain, bias), (x, None, None)]
    if dtype == "float64":
        cases.append((huge, None, None))
    tol = {"float32": 2e-5, "float64": 1e-12}[dtype]
    for data, g, b in cases:
        ran.clear()
        groups = 3
        got = normcore.group_norm(data, groups, g, b)
        assert len(ran) == 1
        with normcore.reference_path():
            want = normcore.group_norm(data, groups, g, b)
        assert got.dtype == data.dtype
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol, equal_nan=True)
    got = normcore.group_norm(x, 3, gain, bias)
    np.testing.assert_array_equal(got[1, 4:8], np.broadcast_to(bias[4:8, None, None], (4, 5, 4)))
    assert np.isnan(got[2, :4]).all() and np.isfinite(got[2, 4:]).all()


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the NaN group
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the reference, 1e200
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_numba_group_norm_backward_matches_the_reference(monkeypatch, dtype):
    """Group norm's backward kernel: each (example, group) a row, per-channel gain.

    Against the reference path in float64 on the same rounded values: with and
    without parameters, one group and one channel per group, a shape large
    enough for the pool's threads (this module's threshold: 2**16 values); a
    NaN stays in its group; float64 values near 1e200 (squares overflow) make
    the kernel decline and the reference's scaled statistics answer. The spy
    counts the kernel's calls.
    """
    ran = _spied_numba_kernel(monkeypatch, "groups_backward")
    rng = np.random.default_rng(4)
    cases = [((3, 12, 5, 4), 3), ((2, 6, 7), 1), ((4, 8), 8), ((8, 32, 32, 32), 4)]
    tol = {"float32": 2e-5, "float64": 1e-12}[dtype]

    def as64(*arrays):
        return [None if a is None else a.astype("float64") for a in arrays]

    for shape, groups in cases:
        x = (rng.normal(size=shape) * 2 + 7).astype(dtype)
        dy = rng.normal(size=shape).astype(dtype)
        gain, bias = (rng.normal(size=shape[1]).astype(dtype) for _ in range(2))
        for g, b in [(gain, bias), (None, None), (gain, None)]:
            ran.clear()
            got = normcore.group_norm_backward(dy, x, groups, g, b)
            assert len(ran) == 1
            with normcore.reference_path():
                want = normcore.group_norm_backward(*as64(dy, x), groups, *as64(g, b))
            for a, w in zip(got, want, strict=True):
                if w is None:  # a parameter that is None has no gradient
                    assert a is None
                    continue
                assert a.dtype == x.dtype
                scale = max(1.0, float(np.abs(w).max()))  # dgain/dbias are sums over the batch
                np.testing.assert_allclose(a, w, rtol=tol, atol=tol * scale)
    x = (rng.normal(size=(3, 12, 5)) + 1).astype(dtype)
    x[2, 0, 1] = np.nan  # example 2, group 0 (of 3)
    grads = normcore.group_norm_backward(np.ones_like(x), x, 3, None, None)
    assert np.isnan(grads.dx[2, :4]).all() and np.isfinite(grads.dx[2, 4:]).all()
    assert np.isfinite(grads.dx[:2]).all()
    if dtype == "float64":
        huge = rng.normal(size=(2, 6, 3)) * 1e200
        ran.clear()
        got = normcore.group_norm_backward(huge * 1e-200, huge, 2).dx
        assert len(ran) == 1  # ran, then declined: its rstd said the variance overflowed
        with normcore.reference_path():
            want = normcore.group_norm_backward(huge * 1e-200, huge, 2).dx
        np.testing.assert_array_equal(got, want)

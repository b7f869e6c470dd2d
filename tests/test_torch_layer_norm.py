"""normcore.torch: drop-ins for torch.nn.LayerNorm / torch.nn.RMSNorm, checked against them."""

from __future__ import annotations

import contextlib
import subprocess
import sys

import pytest

import normcore

torch = pytest.importorskip("torch")

PAIRS = {
    "layer": (lambda *a, **k: normcore.torch.LayerNorm(*a, **k), torch.nn.LayerNorm),
    "rms": (lambda *a, **k: normcore.torch.RMSNorm(*a, **k), torch.nn.RMSNorm),
}


def _random_pair(kind, shape, device, dtype, seed, **kwargs):
    ours_cls, theirs_cls = PAIRS[kind]
    theirs = theirs_cls(shape, device=device, dtype=dtype, **kwargs)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.randn(p.shape, generator=gen).to(p))
    ours = ours_cls(shape, device=device, dtype=dtype, **kwargs)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", sorted(PAIRS))
@pytest.mark.parametrize(
    ("normalized_shape", "x_shape", "kwargs"),
    [
        (16, (8, 16), {}),
        ((4, 5), (2, 3, 4, 5), {}),
        (16, (8, 16), {"eps": 1e-3}),
        (16, (8, 16), {"elementwise_affine": False}),
    ],
)
def test_outputs_and_grads_equal_torch_nn(
    path, torch_device, dtype, kind, normalized_shape, x_shape, kwargs
):
    device = torch_device
    ours, theirs = _random_pair(kind, normalized_shape, device, dtype, 0, **kwargs)
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(x_shape, generator=gen).to(device, dtype)
    dy = torch.randn(x_shape, generator=gen).to(device, dtype)
    results = []
    for module in (ours, theirs):
        x = x0.clone().requires_grad_()
        y = module(x)
        y.backward(dy)
        results.append([y, x.grad] + [p.grad for p in module.parameters()])
        assert y.dtype == dtype and y.device == x0.device
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    assert len(results[0]) == len(results[1])
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)


def test_rms_norm_default_eps_is_torchs_machine_epsilon():
    ours, theirs = _random_pair("rms", 8, "cpu", torch.float32, 2)
    assert ours.eps is None
    x = torch.full((2, 8), 1e-4)  # mean square 1e-8: eps = 1.2e-7 dominates it
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", sorted(PAIRS))
@pytest.mark.parametrize("kwargs", [{}, {"elementwise_affine": False}])
def test_state_dicts_are_interchangeable(kind, kwargs):
    ours, theirs = _random_pair(kind, (3, 4), "cpu", torch.float32, 3, **kwargs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    fresh_theirs = PAIRS[kind][1]((3, 4), **kwargs)
    fresh_theirs.load_state_dict(ours.state_dict())  # strict: same keys and shapes
    for name, value in theirs.state_dict().items():
        assert torch.equal(fresh_theirs.state_dict()[name], value)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]


def test_layer_norm_without_bias_matches_torch():
    ours, theirs = _random_pair("layer", 6, "cpu", torch.float64, 4, bias=False)
    assert ours.bias is None and list(ours.state_dict()) == ["weight"]
    x = torch.randn(3, 6, dtype=torch.float64)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-12, atol=1e-12)


def test_to_moves_parameters_and_converts_dtype():
    ours = normcore.torch.LayerNorm(4).to(torch.float64)
    assert all(p.dtype == torch.float64 for p in ours.parameters())
    y = ours(torch.randn(2, 4, dtype=torch.float64))
    assert y.dtype == torch.float64


@pytest.mark.parametrize("kind", sorted(PAIRS))
def test_wrong_trailing_shape_is_a_value_error(kind):
    module = PAIRS[kind][0]((3, 4), elementwise_affine=False)
    with pytest.raises(ValueError, match=r"input must end with normalized_shape \(3, 4\), got"):
        module(torch.ones(2, 4, 3))


def test_import_normcore_does_not_import_torch_until_normcore_torch_is_used():
    code = (
        "import sys, normcore; print('torch' in sys.modules); "
        "normcore.torch.LayerNorm; import normcore.torch; print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True"]


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match=r"module 'normcore' has no attribute 'nope'"):
        normcore.nope  # noqa: B018


# Dynamo notes that it traces through array-api-compat's lru_cache'd type checks.
@pytest.mark.filterwarnings("ignore:Dynamo detected a call to a `functools.lru_cache`")
def test_torch_compile_matches_eager():
    # The aot_eager backend traces through normcore without invoking a C++ compiler;
    # the default inductor backend also works here but compiles for ~40 s.
    torch._dynamo.reset()
    ours, theirs = _random_pair("layer", 8, "cpu", torch.float32, 5)
    compiled = torch.compile(ours, backend="aot_eager")
    x = torch.randn(4, 8, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    y = compiled(x)
    y.square().sum().backward()
    y_ref = theirs(x_ref)
    y_ref.square().sum().backward()
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(ours.weight.grad, theirs.weight.grad)


class _Ops(torch.utils._python_dispatch.TorchDispatchMode):
    """The aten operations a block runs."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("recorded", ["plain", "no_grad", "requires_grad"])
@pytest.mark.parametrize("method", ["layer_norm", "batch_norm"])
def test_cpu_tensors_autograd_does_not_record_run_the_numpy_kernels(recorded, method, monkeypatch):
    """Plain CPU tensors that autograd does not record run the NumPy adapter's kernels on
    their own memory (one pass; torch's native kernels need a shifted copy first to be
    exact). Where autograd records, batch norm runs them too, as one autograd node whose
    backward runs the compiled backward; layer norm keeps aten's kernels (faster in its
    backward). All give exactly the bias for constant rows/channels of 1e5 and the
    float64 result elsewhere, and the float64 gradients."""
    axis, shape = (-1, (64, 300)) if method == "layer_norm" else (1, (64, 3, 16, 16))
    width = shape[axis]
    gen = torch.Generator().manual_seed(0)
    x = 1e5 + torch.randn(shape, generator=gen, dtype=torch.float64)
    x[1] = 1e5  # a constant row (layer norm); a constant channel needs all of x[:, c]
    if method == "batch_norm":
        x[:, 2] = 1e5
    x = x.float()
    gain = torch.randn(width, generator=gen)
    bias = torch.randn(width, generator=gen)
    if recorded == "requires_grad":
        x.requires_grad_(True)
    call = getattr(normcore, method)
    with _Ops() as ops, torch.no_grad() if recorded == "no_grad" else contextlib.nullcontext():
        y = call(x, gain, bias, axis=axis)
    native = {"layer_norm": "native_layer_norm", "batch_norm": "native_batch_norm"}[method]
    aten = method == "layer_norm" and recorded == "requires_grad"
    assert (native in str(ops.names)) == aten, ops.names
    assert y.requires_grad == (recorded == "requires_grad")
    assert y.dtype == torch.float32 and type(y) is torch.Tensor
    if recorded == "requires_grad":
        dy = torch.randn(shape, generator=gen)
        from normcore.backends.numpy import adapter as numpy_adapter

        compiled = []
        real = numpy_adapter.normalize_backward
        monkeypatch.setattr(
            numpy_adapter,
            "normalize_backward",
            lambda *a, **k: compiled.append(1) or real(*a, **k),
        )
        with _Ops() as ops:
            (dx,) = torch.autograd.grad(y, x, dy)
        assert (f"{native}_backward" in str(ops.names)) == aten, ops.names
        assert len(compiled) == (not aten)  # the compiled backward, not the reference's
        x64 = x.detach().double().requires_grad_()
        reduce64 = (-1,) if method == "layer_norm" else (0, 2, 3)
        view64 = (1, width) if method == "layer_norm" else (1, width, 1, 1)
        centred64 = x64 - x64.mean(reduce64, keepdim=True)
        y64 = centred64 / torch.sqrt((centred64**2).mean(reduce64, keepdim=True) + 1e-5)
        y64 = y64 * gain.double().view(view64)
        (dx64,) = torch.autograd.grad(y64, x64, dy.double())
        torch.testing.assert_close(dx.double(), dx64, rtol=0, atol=2e-3)
    y = y.detach()
    if method == "layer_norm":
        assert torch.equal(y[1], bias)
        reduce = (-1,)
        view = (1, width)
    else:
        assert torch.equal(y[:, 2], bias[2].expand_as(y[:, 2]))
        reduce = (0, 2, 3)
        view = (1, width, 1, 1)
    x64 = x.detach().double()
    centred = x64 - x64.mean(reduce, keepdim=True)
    var = (centred**2).mean(reduce, keepdim=True)
    expected = centred / torch.sqrt(var + 1e-5) * gain.double().view(view) + bias.double().view(
        view
    )
    torch.testing.assert_close(y.double(), expected, rtol=0, atol=2e-4)


def test_a_module_under_no_grad_runs_the_numpy_kernels_with_its_parameters():
    """nn.Parameter gain/bias (plain tensors to torch) do not keep torch's kernels."""
    ours, theirs = _random_pair("layer", 300, "cpu", torch.float32, 0)
    x = torch.randn(64, 300, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), _Ops() as ops:
        y = ours(x)
    assert "native_layer_norm" not in str(ops.names), ops.names
    with torch.no_grad():
        torch.testing.assert_close(y, theirs(x), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif((__import__("os").cpu_count() or 1) < 2, reason="one core: one thread anyway")
def test_torch_set_num_threads_limits_the_numpy_kernels_it_serves(monkeypatch):
    """The NumPy adapter's kernels on CPU tensors take at most torch's thread count."""
    torch = pytest.importorskip("torch")
    from normcore.backends import _numpy_kernels

    from normcore._plumbing.config import settings

    # Every core, whatever NORMCORE_NUM_THREADS or OMP_NUM_THREADS this run has.
    monkeypatch.setattr(settings, "num_threads", None)
    monkeypatch.setattr(settings, "omp_num_threads", None)
    used = []
    threads_for = _numpy_kernels.threads_for

    def counting(nelem):
        used.append(threads_for(nelem))
        return used[-1]

    monkeypatch.setattr(_numpy_kernels, "threads_for", counting)
    x = torch.randn(4096, 256)
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            used.clear()
            normcore.layer_norm(x)
            assert used and max(used) == threads
    finally:
        torch.set_num_threads(before)

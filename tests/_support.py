"""Backends, devices and dtypes the shared suite runs on, and float64 references.

Every test is written once against a :class:`Backend`; ``conftest.py``
parametrizes it over backends x code paths (fast / reference) x dtypes.
Expected values never come from normcore: they come from the float64 NumPy
formulas below, from PyTorch, from finite differences or from math.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any

import array_api_compat
import numpy as np
import pytest

# Closeness for results of a given dtype against a float64 reference computed
# from the same (already rounded) inputs: a few ulps of unit-scale outputs.
TOLERANCE = {"float64": 1e-10, "float32": 1e-5, "float16": 4e-3, "bfloat16": 3e-2}


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _cuda_reason() -> str | None:
    if not _has("torch"):
        return "torch is not installed"
    import torch

    return (
        None if torch.cuda.is_available() else "no CUDA device: torch.cuda.is_available() is False"
    )


def _cupy_reason() -> str | None:
    if not _has("cupy"):
        return "cupy is not installed"
    try:
        import cupy

        return None if cupy.cuda.runtime.getDeviceCount() > 0 else "cupy sees no GPU"
    except Exception as error:  # no driver: cupy imports but cannot see a device
        return f"cupy cannot reach a GPU ({type(error).__name__})"


@dataclass(frozen=True)
class Backend:
    """One array library on one device, as the tests see it."""

    name: str
    library: str
    dtypes: tuple[str, ...]
    read_only: bool = False
    skip_reason: str | None = None
    has_adapter: bool = True
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    # -- the library -----------------------------------------------------
    @property
    def module(self) -> Any:
        return importlib.import_module(self.library)

    @property
    def xp(self) -> Any:
        return array_api_compat.array_namespace(self.asarray(np.zeros(1), "float32"))

    @property
    def device(self) -> Any:
        return array_api_compat.device(self.asarray(np.zeros(1), "float32"))

    def dtype(self, name: str) -> Any:
        if self.library == "array_api_strict":
            return getattr(self.module, name)
        if self.library == "torch":
            return getattr(self.module, name)
        return np.dtype(name) if self.library == "numpy" else self.module.dtype(name)

    # -- conversions -----------------------------------------------------
    def asarray(self, data: Any, dtype: str = "float64") -> Any:
        """Return ``data`` (anything NumPy accepts) as this backend's array."""
        data = np.asarray(data, dtype=np.float64)
        if self.library == "numpy":
            out = data.astype(dtype)
            if self.read_only:
                out.flags.writeable = False
            return out
        if self.library == "array_api_strict":
            strict = self.module
            return strict.asarray(data.astype(dtype), device=strict.Device("device1"))
        if self.library == "torch":
            torch = self.module
            device = "cuda" if self.name == "torch-cuda" else "cpu"
            return torch.asarray(data, dtype=torch.float64, device=device).to(self.dtype(dtype))
        return self.module.asarray(data.astype(dtype))

    def to_numpy(self, a: Any) -> np.ndarray:
        """Return the backend array ``a`` as a float64 NumPy array (test-side only)."""
        if self.library == "numpy":
            return np.asarray(a, dtype=np.float64)
        if self.library == "array_api_strict":
            strict = self.module
            return np.asarray(a.to_device(strict.Device("CPU_DEVICE")), dtype=np.float64)
        if self.library == "torch":
            return a.detach().to("cpu", self.module.float64).numpy()
        return self.module.asnumpy(a).astype(np.float64)

    def dtype_name(self, a: Any) -> str:
        return str(a.dtype).removeprefix("torch.").removeprefix("array_api_strict.")

    def assert_like(self, out: Any, like: Any, shape: tuple[int, ...] | None = None) -> None:
        """Assert ``out`` has ``like``'s namespace, device, dtype and (given) shape."""
        assert array_api_compat.array_namespace(out) is array_api_compat.array_namespace(like)
        assert array_api_compat.device(out) == array_api_compat.device(like)
        assert out.dtype == like.dtype, (out.dtype, like.dtype)
        expected = tuple(like.shape) if shape is None else shape
        assert tuple(out.shape) == expected


BACKENDS = (
    Backend("numpy", "numpy", ("float32", "float64", "float16")),
    Backend("numpy-readonly", "numpy", ("float32", "float64", "float16"), read_only=True),
    Backend(
        "array_api_strict",
        "array_api_strict",
        ("float32", "float64"),
        skip_reason=None if _has("array_api_strict") else "array_api_strict is not installed",
        has_adapter=False,
    ),
    Backend(
        "torch-cpu",
        "torch",
        ("float32", "float64", "float16", "bfloat16"),
        skip_reason=None if _has("torch") else "torch is not installed",
    ),
    Backend(
        "torch-cuda",
        "torch",
        ("float32", "float64", "float16", "bfloat16"),
        skip_reason=_cuda_reason(),
    ),
    Backend("cupy", "cupy", ("float32", "float64", "float16"), skip_reason=_cupy_reason()),
)


def assert_close(
    backend: Backend, actual: Any, expected: np.ndarray, dtype: str, scale: float = 1.0
) -> None:
    """Assert ``actual`` equals the float64 ``expected`` within ``dtype``'s tolerance."""
    got = backend.to_numpy(actual)
    tol = TOLERANCE[dtype] * scale
    np.testing.assert_allclose(got, expected, rtol=tol, atol=tol)


def assert_grads(backend, dtype, grads, expected, likes, shape) -> None:
    """Assert each gradient is like its input in ``likes`` and close to ``expected``.

    A None in ``likes`` (an absent parameter) expects a None gradient. The
    tolerance of a parameter gradient grows with the number of elements it sums.
    """
    for got, want, like in zip(grads, expected, likes, strict=True):
        if like is None:
            assert got is None
            continue
        backend.assert_like(got, like)
        count = max(1, int(np.prod(shape)) // int(np.prod(like.shape)))
        assert_close(backend, got, want, dtype, scale=4 * np.sqrt(count))


# -- float64 references, written independently of normcore ---------------
def _to_last(a: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    k = len(axes)
    return np.moveaxis(a, axes, tuple(range(a.ndim - k, a.ndim)))


def _from_last(a: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    k = len(axes)
    return np.moveaxis(a, tuple(range(a.ndim - k, a.ndim)), axes)


def reference_layer_norm(x, gain=None, bias=None, axes=(-1,), eps=1e-5, center=True):
    """Float64 layer/RMS norm: the normalized axes are moved last (in ``axes`` order)."""
    axes = tuple(a % x.ndim for a in axes)
    t = _to_last(np.asarray(x, np.float64), axes)
    last = tuple(range(t.ndim - len(axes), t.ndim))
    if center:
        mean = t.mean(axis=last, keepdims=True)
        var = ((t - mean) ** 2).mean(axis=last, keepdims=True)
        y = (t - mean) / np.sqrt(var + eps)
    else:
        y = t / np.sqrt((t**2).mean(axis=last, keepdims=True) + eps)
    if gain is not None:
        y = y * gain
    if bias is not None:
        y = y + bias
    return _from_last(y, axes)


def torch_layer_norm_grads(x, dy, gain=None, bias=None, axes=(-1,), eps=1e-5, center=True):
    """Float64 values and gradients from torch.nn.functional.layer_norm / rms_norm + autograd."""
    torch = pytest.importorskip("torch")
    functional = torch.nn.functional
    axes = tuple(a % x.ndim for a in axes)
    xt = torch.tensor(np.asarray(x, np.float64), requires_grad=True)
    params = [
        None if p is None else torch.tensor(np.asarray(p, np.float64), requires_grad=True)
        for p in (gain, bias)
    ]
    moved = torch.movedim(xt, axes, tuple(range(x.ndim - len(axes), x.ndim)))
    shape = tuple(moved.shape[x.ndim - len(axes) :])
    if center:
        out = functional.layer_norm(moved, shape, params[0], params[1], eps)
    else:
        out = functional.rms_norm(moved, shape, params[0], eps)
    y = torch.movedim(out, tuple(range(x.ndim - len(axes), x.ndim)), axes)
    y.backward(torch.tensor(np.asarray(dy, np.float64)))
    grads = [xt.grad] + [None if p is None else p.grad for p in params]
    return y.detach().numpy(), [None if g is None else g.numpy() for g in grads]


def finite_difference(f, x: np.ndarray, dy: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """Central finite differences of ``sum(f(x) * dy)`` with respect to ``x`` (float64)."""
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        up = np.sum(f(x) * dy)
        flat[i] = old - h
        down = np.sum(f(x) * dy)
        flat[i] = old
        gflat[i] = (up - down) / (2 * h)
    return grad


def torch_values_and_grads(fn, dy, *arrays):
    """Float64 ``fn(*tensors)`` and the gradients of ``sum(fn * dy)`` by torch autograd.

    ``arrays`` are NumPy arrays or None (passed to ``fn`` as None, gradient None).
    """
    torch = pytest.importorskip("torch")
    tensors = [
        None if a is None else torch.tensor(np.asarray(a, np.float64), requires_grad=True)
        for a in arrays
    ]
    y = fn(*tensors)
    y.backward(torch.tensor(np.asarray(dy, np.float64)))
    grads = [None if t is None else t.grad.numpy() for t in tensors]
    return y.detach().numpy(), grads

"""Backends, devices and dtypes the shared suite runs on, and float64 references.

Every test is written once against a :class:`Backend`; ``conftest.py``
parametrizes it over backends x code paths (fast / reference) x dtypes.
Expected values never come from normcore: they come from the float64 NumPy
formulas below, from PyTorch, from finite differences or from math.
"""

from __future__ import annotations

from typing import Any

import array_api_compat
import numpy as np
import pytest

from normcore._tools.backends import BACKENDS, Backend

__all__ = [
    "BACKENDS",
    "TOLERANCE",
    "Backend",
    "assert_close",
    "assert_grads",
    "assert_like",
    "assert_unchanged",
    "finite_difference",
    "random_state",
    "reference_layer_norm",
    "snapshot",
    "torch_layer_norm_grads",
    "torch_values_and_grads",
]

# Closeness for results of a given dtype against a float64 reference computed
# from the same (already rounded) inputs: a few ulps of unit-scale outputs.
TOLERANCE = {"float64": 1e-10, "float32": 1e-5, "float16": 4e-3, "bfloat16": 3e-2}


def dtype_name(a: Any) -> str:
    """``a``'s dtype as a plain name (``"float32"``), whatever its library."""
    return str(a.dtype).removeprefix("torch.").removeprefix("array_api_strict.")


def assert_like(out: Any, like: Any, shape: tuple[int, ...] | None = None) -> None:
    """Assert ``out`` has ``like``'s namespace, device, dtype and (given) shape."""
    assert array_api_compat.array_namespace(out) is array_api_compat.array_namespace(like)
    assert array_api_compat.device(out) == array_api_compat.device(like)
    assert out.dtype == like.dtype, (out.dtype, like.dtype)
    expected = tuple(like.shape) if shape is None else shape
    assert tuple(out.shape) == expected


def snapshot(backend: Backend, obj: Any) -> tuple:
    """What a stateful object holds (arrays by identity and value, saved call, gradients)."""
    return (
        {k: (v, backend.to_numpy(v)) for k, v in obj.state_dict().items()},
        obj._saved,
        obj.grads(),
    )


def random_state(rng: np.random.Generator, obj: Any) -> dict[str, np.ndarray]:
    """Random values for every entry of ``obj.state_dict()`` (gains near 1, the rest near 0)."""
    return {
        k: (1.0 if k.startswith("gain") else 0.0) + 0.5 * rng.normal(size=tuple(v.shape))
        for k, v in obj.state_dict().items()
    }


def assert_unchanged(backend: Backend, obj: Any, before: tuple) -> None:
    """Assert ``obj`` still holds exactly what :func:`snapshot` recorded (bit for bit)."""
    state, saved, grads = before
    assert list(obj.state_dict()) == list(state)
    for name, (array, values) in state.items():
        assert obj.state_dict()[name] is array
        np.testing.assert_array_equal(backend.to_numpy(obj.state_dict()[name]), values)
    assert obj._saved is saved
    assert obj.grads().keys() == grads.keys()
    assert all(obj.grads()[k] is v for k, v in grads.items())


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
        assert_like(got, like)
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

"""What every benchmark file shares: backends, implementations, data, float64 references.

Every benchmark class is parametrized over ``backend x impl x shape x dtype``:

* ``backend``: the array library and device (``numpy``, ``torch`` on the CPU,
  ``torch-cuda``, ``cupy``). A library or device that is missing skips.
* ``impl``: what is measured on that backend, so every figure reads as a ratio
  against its neighbours in the same row of parameters:

  - ``normcore``: the public function as users call it (adapter fast paths on);
  - ``reference``: the same call inside ``normcore.reference_path()``, the
    backend-neutral Array API code;
  - ``numba``: as ``normcore``, with ``NORMCORE_NUMBA=1`` (the optional
    compiled kernels of the NumPy adapter); NumPy only, and skips without numba;
  - ``native``: the library's own kernel (``torch.nn.functional``; forward
    and, through autograd, its native backward); NumPy and CuPy have none
    and skip;
  - ``copy``: an allocating copy of the input, the memory-bound limit no
    normalization can beat (it reads and writes each element once).

GPU timings synchronize the device inside the timed function, so they measure
the kernels and not just their launch.
"""

from __future__ import annotations

import abc
import contextlib
import importlib
import importlib.util
import os
from collections.abc import Callable
from typing import Any

import numpy as np

try:  # asv >= 0.6 ships SkipNotImplemented with its runner; asv records a skip, not a failure
    from asv_runner.benchmarks.mark import SkipNotImplemented
except ImportError:  # imported outside asv (e.g. by hand): a plain NotImplementedError

    class SkipNotImplemented(NotImplementedError):
        """Raised to skip a parameter combination that cannot run here."""


try:  # imported once in asv's forkserver, so each forked benchmark gets it for free
    import torch
except ImportError:
    torch = None

import normcore


def _available_backends() -> list[str]:
    """The backends this machine can have, decided without touching a GPU.

    asv forks one process per parameter combination, so parameters that can
    only skip still cost time: leave them out up front. The checks must not
    initialize CUDA in asv's forkserver (a forked child could not use it then):
    ``device_count`` asks NVML, and CuPy is only looked up; a CuPy without a
    usable GPU still skips in ``setup``.
    """
    found = ["numpy"]
    if torch is not None:
        found.append("torch")
        if torch.version.cuda is not None and torch.cuda.device_count() > 0:
            found.append("torch-cuda")
    if importlib.util.find_spec("cupy") is not None:
        found.append("cupy")
    return found


BACKENDS = _available_backends()

# Load normcore's adapters (entry points) once, here in asv's forkserver, so that the
# forked benchmarks do not pay for it in their first (with --quick: their only) timing.
normcore.layer_norm(np.ones((1, 2)))
IMPLS = ["normcore", "reference", "numba", "native", "copy"]
# The impls that call normcore (the others call torch or copy).
NORMCORE_IMPLS = ("normcore", "reference", "numba")
DTYPES = ["float32", "float64"]

# Inputs have a mean far from zero: E[x^2] - E[x]^2 in float32 would lose about
# four digits here, so the track_ benchmarks catch a regression of the statistics.
DATA_MEAN = 100.0
EPS = 1e-5


class Backend:
    """One array library on one device: conversions, copies and synchronization."""

    def __init__(self, name: str):
        self.name = name
        if name == "numpy":
            self.module = np
        elif name in ("torch", "torch-cuda"):
            if torch is None:
                raise SkipNotImplemented("torch is not installed")
            if name == "torch-cuda" and not torch.cuda.is_available():
                raise SkipNotImplemented("no CUDA device")
            self.module = torch
        elif name == "cupy":
            try:
                self.module = importlib.import_module("cupy")
                if self.module.cuda.runtime.getDeviceCount() == 0:
                    raise SkipNotImplemented("cupy sees no GPU")
            except ImportError as error:
                raise SkipNotImplemented("cupy is not installed") from error
            except SkipNotImplemented:
                raise
            except Exception as error:  # cupy without a driver raises its own errors
                raise SkipNotImplemented(f"cupy cannot reach a GPU: {error}") from error
        else:
            raise ValueError(f"unknown backend {name!r}")
        self.on_gpu = name in ("torch-cuda", "cupy")

    def asarray(self, data: np.ndarray) -> Any:
        data = np.ascontiguousarray(data)
        if self.name == "numpy":
            return data.copy()
        if self.name == "cupy":
            return self.module.asarray(data)
        device = "cuda" if self.name == "torch-cuda" else "cpu"
        return torch.tensor(data, device=device)

    def to_numpy(self, a: Any) -> np.ndarray:
        if self.name == "numpy":
            return np.asarray(a)
        if self.name == "cupy":
            return self.module.asnumpy(a)
        return a.detach().cpu().numpy()

    def copy(self, a: Any) -> Any:
        return a.copy() if self.name in ("numpy", "cupy") else a.clone()

    def sync(self) -> None:
        """Wait for the device: a GPU call returns before its kernel has finished."""
        if self.name == "torch-cuda":
            torch.cuda.synchronize()
        elif self.name == "cupy":
            self.module.cuda.Device().synchronize()

    def functional(self) -> Any:
        """``torch.nn.functional``, or skip: only torch has native normalization kernels."""
        if self.module is not torch:
            raise SkipNotImplemented(f"{self.name} has no native normalization kernels")
        return torch.nn.functional


def random(shape: tuple[int, ...], dtype: str, seed: int, mean: float = 0.0, std: float = 1.0):
    """Normal random NumPy data, rounded to ``dtype`` (float32 drawn directly: it is faster)."""
    rng = np.random.default_rng(seed)
    draw_dtype = np.float64 if dtype == "float64" else np.float32
    data = rng.standard_normal(shape, dtype=draw_dtype)
    data *= std
    data += mean
    return data.astype(dtype, copy=False)


def native_backward(forward: Callable[..., Any], dy: Any, *inputs: Any) -> Callable[[], Any]:
    """Record ``forward(*inputs)`` with autograd once; return a call of its native backward.

    The returned function times only the backward kernels of the recorded graph
    (``retain_graph`` keeps the graph for the next repetition).
    """
    leaves = [None if t is None else t.detach().requires_grad_(True) for t in inputs]
    y = forward(*leaves)

    def backward() -> Any:
        return torch.autograd.grad(y, leaves[0], dy, retain_graph=True)[0]

    return backward


def use_numba_kernels(backend: Backend) -> None:
    """Switch this (forked, per-benchmark) process to the NumPy adapter's numba kernels, or skip."""
    if backend.name != "numpy":
        raise SkipNotImplemented("the numba kernels serve NumPy arrays only")
    if importlib.util.find_spec("numba") is None:
        raise SkipNotImplemented("numba is not installed")
    os.environ["NORMCORE_NUMBA"] = "1"


def reference_path_if(enabled: bool) -> contextlib.AbstractContextManager:
    return normcore.reference_path() if enabled else contextlib.nullcontext()


# --- float64 references, written independently of normcore -----------------------------


def reference_forward(x, gain, bias, reduce_axes, center=True, eps=EPS):
    """float64 ``(x - mean) / sqrt(var + eps) * gain + bias`` (``gain``/``bias`` broadcast)."""
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=reduce_axes, keepdims=True) if center else 0.0
    centered = x - mean
    rstd = 1.0 / np.sqrt((centered * centered).mean(axis=reduce_axes, keepdims=True) + eps)
    y = centered * rstd
    if gain is not None:
        y = y * gain
    return y if bias is None else y + bias


def reference_dx(dy, x, gain, reduce_axes, center=True, eps=EPS):
    """float64 gradient of :func:`reference_forward` with respect to ``x``."""
    x = np.asarray(x, dtype=np.float64)
    dxhat = np.asarray(dy, dtype=np.float64) * (1.0 if gain is None else gain)
    mean = x.mean(axis=reduce_axes, keepdims=True) if center else 0.0
    centered = x - mean
    rstd = 1.0 / np.sqrt((centered * centered).mean(axis=reduce_axes, keepdims=True) + eps)
    xhat = centered * rstd
    projection = xhat * (dxhat * xhat).mean(axis=reduce_axes, keepdims=True)
    if center:
        projection = projection + dxhat.mean(axis=reduce_axes, keepdims=True)
    return rstd * (dxhat - projection)


def scaled_error(got: np.ndarray, expected: np.ndarray) -> float:
    """``max |got - expected| / max |expected|``: comparable across shapes and outputs."""
    scale = float(np.max(np.abs(expected))) or 1.0
    return float(np.max(np.abs(got.astype(np.float64) - expected))) / scale


class NormBenchmark(abc.ABC):
    """time_/peakmem_/track_ benchmarks of one normalization, forward and backward.

    A subclass names its shapes in ``params`` and says how to call normcore,
    the native kernel and the float64 reference; everything else is shared.
    """

    param_names = ["backend", "impl", "shape", "dtype"]
    timeout = 300
    has_bias = True

    @abc.abstractmethod
    def shapes(self, label: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Return ``(x shape, gain/bias shape)`` for a ``shape`` parameter."""

    @abc.abstractmethod
    def forward(self, x, gain, bias):
        """The normcore call."""

    def backward(self, dy, x, gain, bias):
        """normcore's dx; raise SkipNotImplemented when normcore has no backward for it."""
        raise SkipNotImplemented(f"no normcore backward for {type(self).__name__}")

    @abc.abstractmethod
    def native(self, functional, x, gain, bias):
        """The same computation with ``torch.nn.functional``, output in x's layout."""

    @abc.abstractmethod
    def expected(self, x, gain, bias, dy):
        """float64 NumPy ``(y, dx)`` from :func:`reference_forward`/:func:`reference_dx`."""

    def setup(self, backend, impl, shape, dtype):
        self.backend = be = Backend(backend)
        x_shape, param_shape = self.shapes(shape)
        data = {
            "x": random(x_shape, dtype, seed=0, mean=DATA_MEAN),
            "dy": random(x_shape, dtype, seed=1),
            "gain": random(param_shape, dtype, seed=2, mean=1.0, std=0.1),
            "bias": random(param_shape, dtype, seed=3, std=0.1) if self.has_bias else None,
        }
        self.data = data
        x, dy, gain, bias = (None if a is None else be.asarray(a) for a in data.values())
        if impl == "numba":
            use_numba_kernels(be)
        self.forward_call, self.backward_call = self._calls(be, impl, x, dy, gain, bias)
        self.impl = impl
        if impl == "numba":
            # numba compiles on the first call (or loads its disk cache): not what is timed.
            for call in (self.forward_call, self.backward_call):
                with contextlib.suppress(SkipNotImplemented):
                    call()

    def _calls(self, be, impl, x, dy, gain, bias):
        if impl == "copy":
            return (lambda: be.copy(x)), (lambda: be.copy(x))
        if impl == "native":
            functional = be.functional()

            def native(*args):
                return self.native(functional, *args)

            return (lambda: native(x, gain, bias)), native_backward(native, dy, x, gain, bias)

        def forward():
            with reference_path_if(impl == "reference"):
                return self.forward(x, gain, bias)

        def backward():
            with reference_path_if(impl == "reference"):
                return self.backward(dy, x, gain, bias)

        return forward, backward

    def _timed(self, call):
        call()
        self.backend.sync()

    def time_forward(self, *params):
        self._timed(self.forward_call)

    def time_backward(self, *params):
        self._timed(self.backward_call)

    def _host_memory(self, call):
        if self.backend.on_gpu:
            raise SkipNotImplemented("peakmem_ sees host memory only, not the GPU's")
        call()

    def peakmem_forward(self, *params):
        self._host_memory(self.forward_call)

    def peakmem_backward(self, *params):
        self._host_memory(self.backward_call)

    def _error(self, index, call):
        if self.impl == "copy":
            raise SkipNotImplemented("a copy has no numerical error")
        got = self.backend.to_numpy(call())
        d = {k: None if v is None else v.astype(np.float64) for k, v in self.data.items()}
        return scaled_error(got, self.expected(d["x"], d["gain"], d["bias"], d["dy"])[index])

    def track_forward_error(self, *params):
        return self._error(0, self.forward_call)

    def track_backward_error(self, *params):
        return self._error(1, self.backward_call)

    track_forward_error.unit = "max abs error / max |y| vs float64"
    track_backward_error.unit = "max abs error / max |dx| vs float64"

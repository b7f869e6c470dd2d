"""What every benchmark file shares: backends, implementations, data, float64 references.

Every benchmark class is parametrized over ``backend x impl x shape x dtype``:

* ``backend``: the array library and device, the benchmarked rows of
  normcore's backend table (``numpy``, ``torch-cpu``, ``torch-cuda``,
  ``cupy``; :mod:`normcore._tools.backends`). A library or device that is
  missing skips.
* ``impl``: what is measured on that backend, so every figure reads as a ratio
  against its neighbours in the same row of parameters:

  - ``normcore``: the public function as users call it (adapter fast paths on);
  - ``reference``: the same call inside ``normcore.reference_path()``, the
    backend-neutral Array API code;
  - ``numpy-kernels``: as ``normcore``, with the setting of ``NORMCORE_NUMBA=0``
    (the NumPy adapter's NumPy-only kernels, its fallback when numba cannot be
    imported, instead of its default numba kernels); NumPy only;
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
from normcore._plumbing import config
from normcore._tools import oracle
from normcore._tools.backends import BACKENDS as TABLE
from normcore._tools.backends import Backend, by_name
from normcore._tools.baselines import native_backward, random


def _available_backends() -> list[str]:
    """The benchmarked rows of normcore's backend table that this machine can have.

    Decided without touching a GPU: asv forks one process per parameter
    combination, so parameters that can only skip still cost time, and
    initializing CUDA in asv's forkserver would leave the forked children
    unable to use it (see :meth:`normcore._tools.backends.Backend.visible`).
    """
    return [b.name for b in TABLE if b.benchmark and b.visible()]


BACKENDS = _available_backends()

# Load normcore's adapters (entry points) once, here in asv's forkserver, so that the
# forked benchmarks do not pay for it in their first (with --quick: their only) timing.
normcore.layer_norm(np.ones((1, 2)))
IMPLS = ["normcore", "reference", "numpy-kernels", "native", "copy"]
# The impls that call normcore (the others call torch or copy).
NORMCORE_IMPLS = ("normcore", "reference", "numpy-kernels")
DTYPES = ["float32", "float64"]

# Inputs have a mean far from zero: E[x^2] - E[x]^2 in float32 would lose about
# four digits here, so the track_ benchmarks catch a regression of the statistics.
DATA_MEAN = 100.0
EPS = 1e-5


def backend(name: str) -> Backend:
    """The table's row called ``name``, or skip (with the reason) when it cannot run here."""
    row = by_name(name)
    reason = row.skip_reason()
    if reason is not None:
        raise SkipNotImplemented(reason)
    return row


def functional(be: Backend) -> Any:
    """``torch.nn.functional``, or skip: only torch has native normalization kernels."""
    if be.library != "torch":
        raise SkipNotImplemented(f"{be.name} has no native normalization kernels")
    return torch.nn.functional


def use_numpy_kernels(be: Backend) -> None:
    """Switch this (forked, per-benchmark) process to the NumPy-only kernels, or skip.

    The setting ``NORMCORE_NUMBA=0`` gives at import; the process was forked after it.
    """
    if be.name != "numpy":
        raise SkipNotImplemented("the NumPy-only kernels serve NumPy arrays only")
    config.settings.numba = False


def reference_path_if(enabled: bool) -> contextlib.AbstractContextManager:
    return normcore.reference_path() if enabled else contextlib.nullcontext()


# --- float64 references, written independently of normcore -----------------------------


def reference_forward(x, gain, bias, reduce_axes, center=True, eps=EPS):
    """float64 ``(x - mean) / sqrt(var + eps) * gain + bias`` (``gain``/``bias`` broadcast)."""
    return oracle.normalization(x, None, gain, bias, reduce_axes, eps, center)[0]


def reference_dx(dy, x, gain, reduce_axes, center=True, eps=EPS):
    """float64 gradient of :func:`reference_forward` with respect to ``x``."""
    return oracle.normalization(x, dy, gain, None, reduce_axes, eps, center)[1]


def scaled_error(got: np.ndarray, expected: np.ndarray) -> float:
    """``max |got - expected| / max |expected|``: comparable across shapes and outputs."""
    scale = float(np.max(np.abs(expected))) or 1.0
    return float(np.max(np.abs(got.astype(np.float64) - expected))) / scale


class Benchmark(abc.ABC):
    """time_/peakmem_ benchmarks of a forward and a backward call on one backend.

    Subclasses take ``(backend, impl, ...)`` parameters and build the two calls
    in :meth:`calls`; the backend row, the kernel switch and the warm-up are
    handled here, once for every benchmark file.
    """

    timeout = 300

    @abc.abstractmethod
    def calls(self, be: Backend, impl: str, *params: Any) -> tuple[Any, Any]:
        """Return ``(forward, backward)``: the two calls that are timed."""

    def setup(self, backend_name, impl, *params):
        self.backend = be = backend(backend_name)
        self.impl = impl
        if impl == "numpy-kernels":
            use_numpy_kernels(be)
        self.forward_call, self.backward_call = self.calls(be, impl, *params)
        if impl in NORMCORE_IMPLS:
            # numba compiles on the first call (or loads its disk cache): not what is timed.
            for call in (self.forward_call, self.backward_call):
                with contextlib.suppress(SkipNotImplemented):
                    call()

    def _timed(self, call):
        self.backend.finish(call())  # computed: dask's calls only build a graph

    def time_forward(self, *params):
        self._timed(self.forward_call)

    def time_backward(self, *params):
        self._timed(self.backward_call)

    def _host_memory(self, call):
        if self.backend.gpu:
            raise SkipNotImplemented("peakmem_ sees host memory only, not the GPU's")
        self.backend.finish(call())

    def peakmem_forward(self, *params):
        self._host_memory(self.forward_call)

    def peakmem_backward(self, *params):
        self._host_memory(self.backward_call)


class NormBenchmark(Benchmark):
    """time_/peakmem_/track_ benchmarks of one normalization, forward and backward.

    A subclass names its shapes in ``params`` and says how to call normcore,
    the native kernel and the float64 reference; everything else is shared.
    """

    param_names = ["backend", "impl", "shape", "dtype"]
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

    def calls(self, be, impl, shape, dtype):
        x_shape, param_shape = self.shapes(shape)
        data = {
            "x": random(x_shape, dtype, seed=0, mean=DATA_MEAN),
            "dy": random(x_shape, dtype, seed=1),
            "gain": random(param_shape, dtype, seed=2, mean=1.0, std=0.1),
            "bias": random(param_shape, dtype, seed=3, std=0.1) if self.has_bias else None,
        }
        self.data = data
        x, dy, gain, bias = (None if a is None else be.asarray(a, dtype) for a in data.values())
        if impl == "copy":
            return (lambda: be.copy(x)), (lambda: be.copy(x))
        if impl == "native":
            torch_functional = functional(be)

            def native(*args):
                return self.native(torch_functional, *args)

            return (lambda: native(x, gain, bias)), native_backward(native, dy, x, gain, bias)

        def forward():
            with reference_path_if(impl == "reference"):
                return self.forward(x, gain, bias)

        def backward():
            with reference_path_if(impl == "reference"):
                return self.backward(dy, x, gain, bias)

        return forward, backward

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

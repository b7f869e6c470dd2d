"""The backends normcore is tested and benchmarked on: one declarative capability table.

Each :class:`Backend` is one array library on one device, with what it can
do: its dtypes, whether it has an adapter (and so a fast path to test against
the reference), whether it is lazy, whether it has autograd, whether it needs
a GPU. The table :data:`BACKENDS` drives the test suite's parametrization and
skip reasons (``tests/conftest.py``), the asv benchmarks' ``backend``
parameter (``asv_benchmarks/benchmarks/common.py``) and ``normcore bench``.
Adding a backend is adding a row here (in the spirit of SciPy's
``xp_capabilities`` and array-api-extra's ``Backend`` enum).

Nothing here is imported by ``import normcore``; a library is imported only
when one of its rows is used.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["BACKENDS", "Backend", "by_name"]


@dataclass(frozen=True)
class Backend:
    """One array library on one device, as the tests and benchmarks see it.

    Attributes
    ----------
    name : str
        Identifier in test ids and benchmark parameters (``"torch-cuda"``).
    library : str
        Module to import (``"torch"``).
    dtypes : tuple of str
        Floating dtypes the library has (the tests run each).
    device_name : str or None
        Where arrays live, as the library names it (None: its default); the
        device object itself is :attr:`device`.
    has_adapter : bool
        Whether normcore has an adapter for it (so a fast path to hold to the
        reference); without one only the reference path exists.
    plugin : str or None
        A third-party adapter that serves this backend in the test suite: the
        module of the example plugin in ``examples/plugin/``, which the tests
        register (it is not installed) and hold to the reference like the
        built-in adapters.
    lazy : bool
        Whether results are lazy (compared after computing them).
    autograd : bool
        Whether the library differentiates through normcore's calls.
    gpu : bool
        Whether it needs a GPU (skipped with the reason when there is none).
    read_only : bool
        NumPy only: inputs are made read-only (normcore must never write them).
    benchmark : bool
        Whether the asv suite measures it (variants that only test behaviour,
        such as read-only NumPy, are left out).
    recurrent : tuple of str
        The code paths ("fast", "reference") on which the recurrent layers'
        tests run. On dask the fast path maps each chunk of the batch to one
        task that runs the whole recurrence on the chunk's NumPy arrays
        (``Adapter.map_batches``); the reference path is the loop over time
        steps itself, one lazy graph of every step, whose construction alone
        takes seconds per test (the whole files took hours on 2 cores):
        ``tests/test_dask.py`` holds it to torch on one case per cell instead.
    """

    name: str
    library: str
    dtypes: tuple[str, ...]
    device_name: str | None = None
    has_adapter: bool = True
    plugin: str | None = None
    lazy: bool = False
    autograd: bool = False
    gpu: bool = False
    read_only: bool = False
    benchmark: bool = True
    recurrent: tuple[str, ...] = ("fast", "reference")

    # -- availability ------------------------------------------------------------
    def installed(self) -> bool:
        """Whether the library can be imported (looked up only, nothing is imported)."""
        # find_spec of a submodule ("dask.array") raises when its package is missing.
        top = self.library.partition(".")[0]
        if importlib.util.find_spec(top) is None:
            return False
        return importlib.util.find_spec(self.library) is not None

    def visible(self) -> bool:
        """Whether this backend may run here, decided without initializing a GPU.

        For asv's forkserver: CUDA initialized there would be unusable in the
        forked benchmarks. torch counts devices through NVML; CuPy is only
        looked up (one without a usable GPU still skips in the benchmark).
        """
        if not self.installed():
            return False
        if self.gpu and self.library == "torch":
            torch = self.module
            return torch.version.cuda is not None and torch.cuda.device_count() > 0
        return True

    def skip_reason(self) -> str | None:
        """Why this backend cannot run here (None when it can). May import the library."""
        return _skip_reason(self)

    # -- the library -------------------------------------------------------------
    @property
    def module(self) -> Any:
        return importlib.import_module(self.library)

    @property
    def xp(self) -> Any:
        """The Array API namespace of this backend's arrays."""
        import array_api_compat

        return array_api_compat.array_namespace(self.asarray(np.zeros(1), "float32"))

    @property
    def device(self) -> Any:
        """The device object of this backend's arrays, as the library reports it."""
        import array_api_compat

        return array_api_compat.device(self.asarray(np.zeros(1), "float32"))

    def dtype(self, name: str) -> Any:
        """The library's dtype called ``name``."""
        if self.library in ("numpy", "dask.array"):
            return np.dtype(name)
        if self.library == "cupy":
            return self.module.dtype(name)
        if self.library == "jax":
            return getattr(importlib.import_module("jax.numpy"), name)
        return getattr(self.module, name)

    # -- conversions ---------------------------------------------------------------
    def asarray(self, data: Any, dtype: str = "float64") -> Any:
        """``data`` (anything NumPy accepts) as this backend's array of ``dtype``."""
        data = np.asarray(data, dtype=np.float64)
        if self.library == "numpy":
            out = data.astype(dtype)
            if self.read_only:
                out.flags.writeable = False
            return out
        if self.library == "array_api_strict":
            strict = self.module
            return strict.asarray(data.astype(dtype), device=strict.Device(self.device_name))
        if self.library == "torch":
            torch = self.module
            tensor = torch.asarray(data, dtype=torch.float64, device=self.device_name)
            return tensor.to(self.dtype(dtype))
        if self.library == "jax":
            # float64 needs jax_enable_x64 (the test suite's jax fixture turns it on);
            # without it this would be float32, so refuse rather than test the wrong dtype.
            out = importlib.import_module("jax.numpy").asarray(data.astype(dtype))
            if str(out.dtype) != dtype:
                raise RuntimeError(f"jax made {out.dtype} for {dtype}: enable jax_enable_x64")
            return out
        if self.library == "dask.array":
            return self.module.from_array(data.astype(dtype), chunks=dask_chunks(data.shape))
        return self.module.asarray(data.astype(dtype))

    def to_numpy(self, a: Any) -> np.ndarray:
        """The backend array ``a`` as a float64 NumPy array (for comparisons)."""
        if self.library == "numpy":
            return np.asarray(a, dtype=np.float64)
        if self.library == "array_api_strict":
            strict = self.module
            return np.asarray(a.to_device(strict.Device("CPU_DEVICE")), dtype=np.float64)
        if self.library == "torch":
            return a.detach().to("cpu", self.module.float64).numpy()
        if self.library == "jax":
            return np.asarray(a, dtype=np.float64)
        if self.library == "dask.array":
            return np.asarray(a.compute(scheduler="sync"), dtype=np.float64)
        return self.module.asnumpy(a).astype(np.float64)

    def copy(self, a: Any) -> Any:
        """An allocating copy of ``a`` (the memory-bandwidth baseline of the benchmarks)."""
        return a.clone() if self.library == "torch" else a.copy()

    def sync(self) -> None:
        """Wait for the device: a GPU call returns before its kernel has finished."""
        if self.library == "torch" and self.gpu:
            self.module.cuda.synchronize()
        elif self.library == "cupy":
            self.module.cuda.Device().synchronize()

    def finish(self, result: Any) -> None:
        """Have ``result`` (any nesting of arrays) computed: lazy ones computed, the GPU waited for.

        A dask call only builds a graph; a benchmark that did not compute it
        would time the graph's construction alone.
        """
        if self.lazy:
            import dask

            from normcore._plumbing.trees import flatten

            dask.compute(*(a for a in flatten(result)[0] if dask.is_dask_collection(a)))
        self.sync()


_FLOATS = ("float32", "float64")
#: Every backend, in the order tests and benchmarks list them.
BACKENDS: tuple[Backend, ...] = (
    Backend("numpy", "numpy", (*_FLOATS, "float16")),
    Backend("numpy-readonly", "numpy", (*_FLOATS, "float16"), read_only=True, benchmark=False),
    # A non-default device: any hidden NumPy conversion in the core fails here.
    Backend(
        "array_api_strict",
        "array_api_strict",
        _FLOATS,
        "device1",
        plugin="normcore_strict",
        benchmark=False,
    ),
    Backend("torch-cpu", "torch", (*_FLOATS, "float16", "bfloat16"), "cpu", autograd=True),
    Backend(
        "torch-cuda",
        "torch",
        (*_FLOATS, "float16", "bfloat16"),
        "cuda",
        autograd=True,
        gpu=True,
    ),
    Backend("cupy", "cupy", (*_FLOATS, "float16"), gpu=True),
    # JAX on its default device (the CPU here). float64 needs jax_enable_x64, which the
    # test suite's backend fixture turns on for this row only (tests/conftest.py).
    Backend("jax", "jax", _FLOATS, autograd=True, benchmark=False),
    # NumPy-backed dask arrays cut into two chunks along axis 0 (see dask_chunks), computed
    # on the synchronous scheduler when compared (to_numpy).
    Backend("dask", "dask.array", (*_FLOATS, "float16"), lazy=True, recurrent=("fast",)),
)


def dask_chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The dask row's chunks: axis 0 in two chunks (when it has two values), the rest whole.

    So the layer/RMS/group/instance-norm layouts of the shared tests keep their
    statistics inside one chunk (the blockwise fast path), while batch
    statistics, moments and population statistics span chunks (the tree
    reduction). Cross-chunk layouts of the others have tests of their own
    (``tests/test_dask.py``).
    """
    if len(shape) < 2:
        return tuple(shape)
    return (max(1, -(-shape[0] // 2)), *shape[1:])


def by_name(name: str) -> Backend:
    """The row of :data:`BACKENDS` called ``name``."""
    for backend in BACKENDS:
        if backend.name == name:
            return backend
    raise ValueError(f"unknown backend {name!r}; known: {[b.name for b in BACKENDS]}")


@functools.cache
def _skip_reason(backend: Backend) -> str | None:
    if not backend.installed():
        return f"{backend.library} is not installed"
    if not backend.gpu:
        return None
    if backend.library == "torch":
        torch = backend.module
        return None if torch.cuda.is_available() else "no CUDA device (torch.cuda.is_available())"
    try:
        count = backend.module.cuda.runtime.getDeviceCount()
    except Exception as error:  # no driver: cupy imports but cannot see a device
        return f"{backend.library} cannot reach a GPU ({type(error).__name__})"
    return None if count > 0 else f"{backend.library} sees no GPU"

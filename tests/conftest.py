"""Parametrize every test over backends x code paths x dtypes, from one capability table.

A test that takes ``backend`` runs on every row of
:data:`normcore._tools.backends.BACKENDS` (numpy, read-only numpy,
array_api_strict on a non-default device, torch on the CPU, torch on CUDA,
CuPy and JAX); a row that cannot run here is skipped with its reason ("torch is not
installed", "no CUDA device ..."). Backends with an adapter run through both
the adapters' fast paths and the reference path. A test that also takes
``dtype`` runs on every dtype of the backend's row.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pathlib
import sys

# Idle OpenMP workers (numba's, torch's) spin for a while by default; on a
# 2-core machine that slows every later test. Set before any runtime starts.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
from _support import BACKENDS
from normcore.backends.numpy import adapter as numpy_adapter

import normcore
from normcore._plumbing import registry

PATHS = ("fast", "reference")
PLUGINS = pathlib.Path(__file__).resolve().parent.parent / "examples" / "plugin"


def _register_plugins() -> None:
    """Register the example third-party plugin(s) of the table, as if they were installed."""
    sys.path.insert(0, str(PLUGINS))
    for backend in BACKENDS:
        if backend.plugin is not None and backend.skip_reason() is None:
            registry.register(importlib.import_module(backend.plugin).adapter)


_register_plugins()


# Test files of the recurrent layers: they run on the code paths of a row's Backend.recurrent.
RECURRENT_TESTS = ("test_recurrent", "test_rnn_modules")


def _backend_cases(with_dtype: bool, recurrent: bool = False):
    for backend in BACKENDS:
        skipped = backend.skip_reason()
        paths = PATHS if backend.has_adapter else ("reference",)
        for path in paths:
            reason = skipped
            if reason is None and recurrent and path not in backend.recurrent:
                reason = (
                    f"the recurrent layers' {path} path is not tested on {backend.name} here: "
                    "one lazy graph of every time step (see Backend.recurrent; test_dask.py)"
                )
            marks = [pytest.mark.skip(reason=reason)] if reason else []
            for dtype in backend.dtypes if with_dtype else (None,):
                ident = f"{backend.name}-{path}" + (f"-{dtype}" if dtype else "")
                values = ((backend, path), dtype) if with_dtype else ((backend, path),)
                yield pytest.param(*values, id=ident, marks=marks)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" not in metafunc.fixturenames:
        return
    recurrent = metafunc.module.__name__.rpartition(".")[2] in RECURRENT_TESTS
    if "dtype" in metafunc.fixturenames:
        cases = list(_backend_cases(True, recurrent))
        metafunc.parametrize(("backend", "dtype"), cases, indirect=["backend"])
    else:
        metafunc.parametrize("backend", list(_backend_cases(False, recurrent)), indirect=True)


@pytest.fixture
def backend(request, monkeypatch):
    """The backend under test, with the code path (fast or reference) in force.

    On the fast path the NumPy adapter's kernels serve every size: in normal
    use small batch-norm inputs run the reference, which the tests would then
    check against itself (``test_adapters`` checks that threshold). JAX's row
    runs with ``jax_enable_x64`` on (JAX has float64 only then), for that test
    only: the rest of the suite sees JAX's default, as users do.
    """
    backend, path = request.param
    monkeypatch.setattr(numpy_adapter, "small_channels", 0)
    with contextlib.ExitStack() as stack:
        if backend.library == "jax":
            stack.enter_context(importlib.import_module("jax").enable_x64(True))
        stack.enter_context(normcore.reference_path(path == "reference"))
        yield backend


@pytest.fixture(params=PATHS)
def path(request, monkeypatch):
    """The code path (fast or reference), for tests that make their own inputs (normcore.torch).

    As with :func:`backend`, the NumPy adapter's kernels serve every size on the
    fast path (CPU tensors reach them too), so that small inputs test them.
    """
    monkeypatch.setattr(numpy_adapter, "small_channels", 0)
    with normcore.reference_path(request.param == "reference"):
        yield request.param


@pytest.fixture(
    params=[
        pytest.param(b.device_name, id=b.name, marks=[pytest.mark.skip(reason=b.skip_reason())])
        if b.skip_reason()
        else pytest.param(b.device_name, id=b.name)
        for b in BACKENDS
        if b.library == "torch"
    ]
)
def torch_device(request):
    """Each torch device of the backend table (``"cpu"``, ``"cuda"``), skipped with its reason."""
    return request.param


@pytest.fixture
def rng():
    return __import__("numpy").random.default_rng(20161607)

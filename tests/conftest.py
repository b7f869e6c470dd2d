"""Parametrize every test over backends x code paths x dtypes.

A test that takes ``backend`` runs on every backend in ``_support.BACKENDS``
(numpy, read-only numpy, array_api_strict on a non-default device, torch on
CPU, torch on CUDA and CuPy when a GPU is present, skipped otherwise) and, for
backends with an adapter, through both the adapters' fast paths and the
reference path. A test that also takes ``dtype`` runs on every dtype the
backend has.
"""

from __future__ import annotations

import os

# Idle OpenMP workers (numba's, torch's) spin for a while by default; on a
# 2-core machine that slows every later test. Set before any runtime starts.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
from _support import BACKENDS

import normcore

PATHS = ("fast", "reference")


def _backend_cases(with_dtype: bool):
    for backend in BACKENDS:
        marks = [pytest.mark.skip(reason=backend.skip_reason)] if backend.skip_reason else []
        paths = PATHS if backend.has_adapter else ("reference",)
        for path in paths:
            dtypes = backend.dtypes if with_dtype else (None,)
            for dtype in dtypes:
                ident = f"{backend.name}-{path}" + (f"-{dtype}" if dtype else "")
                values = ((backend, path), dtype) if with_dtype else (backend, path)
                yield pytest.param(*values if with_dtype else (values,), id=ident, marks=marks)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" not in metafunc.fixturenames:
        return
    if "dtype" in metafunc.fixturenames:
        metafunc.parametrize(("backend", "dtype"), list(_backend_cases(True)), indirect=["backend"])
    else:
        metafunc.parametrize("backend", list(_backend_cases(False)), indirect=True)


@pytest.fixture
def backend(request):
    """The backend under test, with the code path (fast or reference) in force."""
    backend, path = request.param
    with normcore.reference_path(path == "reference"):
        yield backend


@pytest.fixture
def rng():
    return __import__("numpy").random.default_rng(20161607)

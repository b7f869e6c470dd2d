"""Adapter plugins: discovery by entry point, lazy imports, fast-path dispatch and the switch."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings
from importlib import metadata

import numpy as np
import pytest
from normcore.backends.numpy import adapter as numpy_adapter

import normcore
from normcore._plumbing import registry as _registry
from normcore._plumbing.compat import namespace_of
from normcore.adapter import Adapter, Layout, reference_normalize


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        check=False,
    )


@pytest.fixture
def fresh_registry(monkeypatch):
    """Let a test change what entry points exist, then restore the real registry."""
    monkeypatch.setattr(_registry, "_ADAPTERS", None)
    monkeypatch.setattr(_registry, "_ADAPTER_BY_TYPE", {})
    monkeypatch.setattr(_registry, "_LOAD_ERRORS", {})


def test_builtin_adapters_are_entry_points():
    points = {ep.name: ep.value for ep in metadata.entry_points(group="normcore.backends")}
    assert points["numpy"] == "normcore.backends.numpy:adapter"
    assert points["torch"] == "normcore.backends.torch:adapter"
    assert points["cupy"] == "normcore.backends.cupy:adapter"
    assert points["jax"] == "normcore.backends.jax:adapter"
    assert points["dask"] == "normcore.backends.dask:adapter"
    assert {a.name for a in _registry.adapters()} >= {"numpy", "torch", "cupy", "jax", "dask"}


def test_numpy_user_never_imports_torch_cupy_or_jax():
    result = _run(
        """
        import sys, numpy as np, normcore
        normcore.layer_norm(np.ones((2, 3)))
        normcore.layer_norm_backward(np.ones((2, 3)), np.ones((2, 3)))
        normcore.BatchNorm(3)(np.ones((2, 3), dtype=np.float32))
        normcore.population_stats([np.ones((2, 3))])
        print(sorted(m for m in ("torch", "cupy", "jax", "dask") if m in sys.modules))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_import_works_when_optional_libraries_are_broken():
    result = _run(
        """
        import sys
        sys.modules["torch"] = None  # any "import torch" now raises ImportError
        sys.modules["cupy"] = None
        sys.modules["jax"] = None
        sys.modules["dask"] = sys.modules["dask.array"] = None
        import numpy as np, normcore
        print(normcore.layer_norm(np.array([[1.0, 3.0]])).round(3).tolist())
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[[-1.0, 1.0]]"


def test_broken_plugin_warns_and_is_skipped(fresh_registry, monkeypatch):
    broken = metadata.EntryPoint("broken", "no_such_module:adapter", "normcore.backends")
    real = metadata.entry_points(group="normcore.backends")
    real_entry_points = metadata.entry_points
    # Other groups (numba's extensions, loaded lazily) still see the real entry points.
    monkeypatch.setattr(
        metadata,
        "entry_points",
        lambda **kw: (
            [*real, broken] if kw.get("group") == "normcore.backends" else real_entry_points(**kw)
        ),
    )
    with pytest.warns(RuntimeWarning, match=r"could not load the backend adapter 'broken'"):
        names = {a.name for a in _registry.adapters()}
    assert "broken" not in names and "numpy" in names
    assert "No module named 'no_such_module'" in _registry.load_errors()["broken"]
    np.testing.assert_allclose(normcore.layer_norm(np.array([[1.0, 3.0]])), [[-1, 1]], atol=1e-4)


class _RecordingAdapter(Adapter):
    """A third-party adapter for array_api_strict with a fast path that records its calls."""

    name = "strict-plugin"
    library = "array_api_strict"

    def __init__(self):
        self.calls = []

    def owns(self, x):
        return type(x).__module__.startswith("array_api_strict")

    def normalize(self, xp, x, gain, bias, layout, *, need_stats=False):
        self.calls.append(layout.reduce_axes)
        if layout.reduce_axes != (x.ndim - 1,):
            return NotImplemented  # only the last axis; the rest falls back
        return reference_normalize(self, xp, x, gain, bias, layout, need_stats=need_stats)


def test_third_party_plugin_fast_path_and_reference_switch(fresh_registry, monkeypatch):
    strict = pytest.importorskip("array_api_strict")
    plugin = _RecordingAdapter()
    point = metadata.EntryPoint("strict-plugin", "plugin:adapter", "normcore.backends")
    monkeypatch.setattr(metadata.EntryPoint, "load", lambda self: plugin)
    monkeypatch.setattr(metadata, "entry_points", lambda group: [point])
    x = strict.asarray(np.random.default_rng(0).normal(size=(3, 4)))
    expected = normcore.layer_norm(x)
    assert plugin.calls == [(1,)]
    normcore.layer_norm(x, axis=0)  # NotImplemented -> reference path, same result type
    assert plugin.calls == [(1,), (0,)]
    with normcore.reference_path():
        assert normcore.using_reference_path()
        again = normcore.layer_norm(x)
    assert plugin.calls == [(1,), (0,)]  # the switch bypassed the plugin
    assert bool(strict.all(again == expected))


class _CarelessAdapter(Adapter):
    """A plugin listed before the built-ins whose checks assume every array is its own."""

    name = "careless"
    library = "numpy"  # loaded whenever NumPy is

    def owns(self, x):
        return x.platform == "tpu"  # AttributeError for anything else


def test_plugin_whose_owns_raises_warns_once_and_breaks_nothing(fresh_registry, monkeypatch):
    plugin = _CarelessAdapter()
    numpy_point = next(
        p for p in metadata.entry_points(group="normcore.backends") if p.name == "numpy"
    )
    careless_point = metadata.EntryPoint("careless", "plugin:adapter", "normcore.backends")
    real_load = metadata.EntryPoint.load
    monkeypatch.setattr(
        metadata.EntryPoint, "load", lambda ep: plugin if ep.name == "careless" else real_load(ep)
    )
    monkeypatch.setattr(metadata, "entry_points", lambda group: [careless_point, numpy_point])
    x = np.array([[1.0, 3.0]], dtype=np.float32)
    with pytest.warns(RuntimeWarning, match=r"'careless' raised AttributeError"):
        y = normcore.layer_norm(x)
    np.testing.assert_allclose(y, [[-1, 1]], atol=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: later calls neither warn nor raise
        np.testing.assert_allclose(normcore.layer_norm(x), [[-1, 1]], atol=1e-4)
        np.testing.assert_allclose(normcore.layer_norm(x.astype(np.float64)), [[-1, 1]], atol=1e-4)
    assert "careless" in _registry.load_errors()
    assert _registry.adapter_for(x).name == "numpy"


class _FailingKernelAdapter(Adapter):
    """A plugin whose fast path has a bug: the error reaches the caller (no silent fallback)."""

    name = "failing"
    library = "numpy"

    def owns(self, x):
        return isinstance(x, np.ndarray)

    def normalize(self, xp, x, gain, bias, layout, *, need_stats=False):
        raise ZeroDivisionError("the plugin's kernel is broken")


def test_an_error_in_a_fast_path_propagates(fresh_registry):
    _registry.register(_FailingKernelAdapter())
    x = np.ones((2, 3))
    with pytest.raises(ZeroDivisionError, match="the plugin's kernel is broken"):
        normcore.layer_norm(x)
    with normcore.reference_path():  # the switch rules the plugin out
        np.testing.assert_array_equal(normcore.layer_norm(x), np.zeros((2, 3)))


def test_environment_variable_forces_reference_path():
    code = "import normcore; print(normcore.using_reference_path())"
    assert _run(code, NORMCORE_REFERENCE_PATH="1").stdout.strip() == "True"
    assert _run(code, NORMCORE_REFERENCE_PATH="0").stdout.strip() == "False"
    with_override = (
        "import normcore\n"
        "with normcore.reference_path(False): print(normcore.using_reference_path())"
    )
    assert _run(with_override, NORMCORE_REFERENCE_PATH="1").stdout.strip() == "False"


def test_info_command_lists_adapters_and_devices():
    result = subprocess.run(
        [sys.executable, "-m", "normcore", "info"], capture_output=True, text=True, check=True
    )
    assert f"normcore {normcore.__version__}" in result.stdout
    for name in ("numpy", "torch", "cupy", "jax", "dask"):
        assert f"  {name} " in result.stdout
    assert "devices: cpu" in result.stdout


def test_numpy_batch_norm_kernels_serve_inputs_from_their_threshold_on():
    """Below ``small_channels`` elements the channel kernels decline (the reference is faster)."""
    xp = namespace_of(np.ones(1))
    small = numpy_adapter.small_channels
    layout = Layout((0,), (1,))
    below, above = np.ones((small // 4 - 1, 4)), np.ones((small // 4, 4))
    assert numpy_adapter.normalize(xp, below, None, None, layout) is NotImplemented
    assert numpy_adapter.normalize_backward(xp, below, below, None, None, layout) is NotImplemented
    assert numpy_adapter.normalize(xp, above, None, None, layout) is not NotImplemented
    assert numpy_adapter.normalize_backward(xp, above, above, None, None, layout) is not (
        NotImplemented
    )
    rows = Layout((1,), (1,))  # the row kernels serve every size
    assert numpy_adapter.normalize(xp, np.ones((1, 2)), None, None, rows) is not NotImplemented


def test_the_example_plugin_serves_the_strict_backend(monkeypatch):
    """The documented example plugin (examples/plugin) is registered for the shared suite."""
    strict = pytest.importorskip("array_api_strict")
    x = strict.asarray(np.arange(6.0).reshape(2, 3))
    plugin = _registry.adapter_for(x)
    assert plugin.name == "strict" and type(plugin).__module__ == "normcore_strict"
    calls = []
    original = type(plugin).normalize

    def recording(self, *args, **kwargs):
        calls.append(args[-1])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(plugin), "normalize", recording)
    normcore.layer_norm(x)
    assert len(calls) == 1 and calls[0].reduce_axes == (1,)

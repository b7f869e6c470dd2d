"""Adapter plugins: discovery by entry point, lazy imports, fast-path dispatch and the switch."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings
from importlib import metadata

import numpy as np
import pytest

import normcore
from normcore import _registry


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
    monkeypatch.setattr(_registry, "_FAST_PATHS", {})
    monkeypatch.setattr(_registry, "_LOAD_ERRORS", {})


def test_builtin_adapters_are_entry_points():
    points = {ep.name: ep.value for ep in metadata.entry_points(group="normcore.backends")}
    assert points["numpy"] == "normcore.backends.numpy:adapter"
    assert points["torch"] == "normcore.backends.torch:adapter"
    assert points["cupy"] == "normcore.backends.cupy:adapter"
    assert {a.name for a in _registry.adapters()} >= {"numpy", "torch", "cupy"}


def test_numpy_user_never_imports_torch_or_cupy():
    result = _run(
        """
        import sys, numpy as np, normcore
        normcore.layer_norm(np.ones((2, 3)))
        normcore.layer_norm_backward(np.ones((2, 3)), np.ones((2, 3)))
        print(sorted(m for m in ("torch", "cupy") if m in sys.modules))
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


class _RecordingAdapter(normcore.Adapter):
    """A third-party adapter for array_api_strict with a fast path that records its calls."""

    name = "strict-plugin"
    library = "array_api_strict"

    def __init__(self):
        self.calls = []

    def owns(self, x):
        return type(x).__module__.startswith("array_api_strict")

    def fast_paths(self):
        from normcore._primitive import normalize

        def fast_normalize(xp, adapter, x, *args, **layout):
            self.calls.append(layout["reduce_axes"])
            if layout["reduce_axes"] != (x.ndim - 1,):
                return NotImplemented  # only the last axis; the rest falls back
            return normalize(xp, adapter, x, *args, **layout)

        return {"normalize": fast_normalize}


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


class _CarelessAdapter(normcore.Adapter):
    """A plugin listed before the built-ins whose checks assume every array is its own."""

    name = "careless"
    library = "numpy"  # loaded whenever NumPy is

    def __init__(self, broken):
        self.broken = broken

    def owns(self, x):
        if self.broken == "owns":
            return x.platform == "tpu"  # AttributeError for anything else
        return isinstance(x, np.ndarray) and x.dtype == np.float32

    def fast_paths(self):
        raise ImportError("the plugin's kernels need libfoo")


@pytest.mark.parametrize("broken", ["owns", "fast_paths"])
def test_plugin_that_raises_later_warns_once_and_breaks_nothing(
    fresh_registry, monkeypatch, broken
):
    plugin = _CarelessAdapter(broken)
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
    message = r"'careless' raised AttributeError" if broken == "owns" else r"'careless' could not"
    with pytest.warns(RuntimeWarning, match=message):
        y = normcore.layer_norm(x)
    np.testing.assert_allclose(y, [[-1, 1]], atol=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: later calls neither warn nor raise
        np.testing.assert_allclose(normcore.layer_norm(x), [[-1, 1]], atol=1e-4)
        np.testing.assert_allclose(normcore.layer_norm(x.astype(np.float64)), [[-1, 1]], atol=1e-4)
    assert "careless" in _registry.load_errors()
    owner = _registry.adapter_for(x)
    assert owner is (plugin if broken == "fast_paths" else _registry.adapter_for(x.astype(float)))


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
    for name in ("numpy", "torch", "cupy"):
        assert f"  {name} " in result.stdout
    assert "devices: cpu" in result.stdout

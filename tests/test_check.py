"""``normcore check``: the self-test command, its table, its failures and its exit codes."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
from normcore.backends.numpy import adapter as numpy_adapter

from normcore._plumbing import registry as _registry
from normcore.adapter import Normalized, reference_normalize
from normcore.cli import main


def test_numpy_passes_every_function_and_dtype(capsys):
    assert main(["check", "--backend", "numpy"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == [
        "backend", "device", "dtype", "function", "fast", "vs", "ref", "vs", "float64", "result"
    ]  # fmt: skip
    rows = [line.split() for line in out[1:-1]]
    methods = ("layer_norm", "rms_norm", "batch_norm", "batch_norm_given_stats")
    assert {(r[2], r[3]) for r in rows} == {
        (dtype, function + suffix)
        for dtype in ("float32", "float64")
        for function in methods
        for suffix in ("", "_backward")
    }
    assert all(r[0] == "numpy" and r[1] == "cpu" and r[-1] == "PASS" for r in rows)
    assert out[-1] == "16 passed, 0 failed, 0 skipped"


def test_every_installed_adapter_is_checked(capsys):
    assert main(["check"]) == 0
    out = capsys.readouterr().out
    assert "numpy    cpu" in out
    if importlib.util.find_spec("torch") is not None:
        assert "torch    cpu" in out
    if importlib.util.find_spec("cupy") is None:
        assert "cupy     -" in out and "SKIP  library not installed" in out


def test_a_wrong_fast_path_fails_the_check(capsys, monkeypatch):
    def off_by_one(xp, x, gain, bias, layout, *, need_stats=False):
        y = reference_normalize(numpy_adapter, xp, x, gain, bias, layout).y
        return Normalized(y + 1, None, None)

    monkeypatch.setattr(numpy_adapter, "normalize", off_by_one)
    assert main(["check", "--backend", "numpy"]) == 1
    out = capsys.readouterr().out
    failing = {line.split()[3] for line in out.splitlines() if line.endswith("FAIL")}
    # the backward's fast path is not broken
    assert failing == {"layer_norm", "rms_norm", "batch_norm", "batch_norm_given_stats"}
    assert "8 failed" in out


def test_a_fast_path_wrong_only_for_batch_norm_layouts_fails_the_check(capsys, monkeypatch):
    """Statistics over the axes the parameters do not span: the batch-norm layout is checked."""

    def wrong_for_channels(xp, x, gain, bias, layout, *, need_stats=False):
        result = reference_normalize(numpy_adapter, xp, x, gain, bias, layout)
        if set(layout.reduce_axes) & set(layout.param_axes):
            return result
        return Normalized(result.y * 1.01, result.mean, result.var)

    monkeypatch.setattr(numpy_adapter, "normalize", wrong_for_channels)
    assert main(["check", "--backend", "numpy"]) == 1
    out = capsys.readouterr().out
    failing = {line.split()[3] for line in out.splitlines() if line.endswith("FAIL")}
    assert failing == {"batch_norm", "batch_norm_given_stats"}


def test_an_exception_is_reported_as_a_failure(capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(numpy_adapter, "normalize_backward", broken)
    assert main(["check", "--backend", "numpy"]) == 1
    out = capsys.readouterr().out
    assert "layer_norm_backward" in out and "FAIL  RuntimeError: kernel exploded" in out


def test_unknown_backend_is_one_line_and_exit_code_2(capsys):
    assert main(["check", "--backend", "nosuchlib"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(
        "normcore check: unknown backend 'nosuchlib'; the registered adapters"
    )
    assert "numpy" in lines[0] and "torch" in lines[0]


@pytest.mark.parametrize(
    ("name", "hint"),
    [("torch", "pip install torch==2.13.0"), ("cupy", "pip install cupy-cuda12x")],
)
def test_missing_library_names_it_and_how_to_install(capsys, monkeypatch, name, hint):
    adapter = next(a for a in _registry.adapters() if a.name == name)
    monkeypatch.setattr(adapter, "library_version", lambda: None)
    assert main(["check", "--backend", name]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"normcore check: backend {name!r} needs {name}, which is not")
    assert hint in lines[0]


def test_command_line_exit_code_and_no_traceback():
    result = subprocess.run(
        [sys.executable, "-m", "normcore", "check", "--backend", "nope"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1

"""``python -m normcore bench``: it runs and prints the ratio table (no timing assertions)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from normcore.backends.numpy import adapter as numpy_adapter

import normcore
from normcore._plumbing import config
from normcore._tools import bench as _bench
from normcore.cli import main

TINY = _bench.Plan(elements=2**12, dims=(256,), spatial=2, repeats=1, min_sample_s=0.0)


def test_cli_quick_prints_the_table(capsys):
    assert main(["bench", "--quick"]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("method"))
    columns = ["method", "layout", "D", "backend", "dir", "time", "x copy", "vs torch", "peak mem"]
    assert all(name in header for name in columns)
    cells = [line.split() for line in out.splitlines()]
    for d in ("256", "1024", "4096"):
        assert any(row[:5] == ["layer_norm", "N", "x", "D", d] for row in cells)
    assert "PASS" not in out and "MISS" not in out  # small arrays: ratios shown, not graded
    assert "(<=1.00)" in out and "(<=1.60)" in out  # issue #16's copy targets, shown ungraded
    for method in ("rms_norm", "group_norm"):
        assert any(row[:1] == [method] for row in cells)
    assert out.rstrip().endswith("(run without --quick to check them)")
    numba = numpy_adapter.kernel_set() == "numba"
    kernels = "numba kernels (the default)" if numba else "NumPy-only"
    assert f"normcore's NumPy path: {kernels}" in out.splitlines()[0]
    interleaved = out.split("\ninterleaved in one process:")[1]
    layouts = ["beside 128^2 matmul"] + (["beside torch LN"] if _bench._torch() else [])
    for layout in layouts:
        assert any(line.startswith(f"layer_norm  {layout}") for line in interleaved.splitlines())


def test_every_targeted_figure_gets_a_verdict():
    out = io.StringIO()
    rows = _bench.run(out=out, plan=TINY)
    forward = next(r for r in rows if (r.backend, r.direction) == ("numpy", "forward"))
    assert forward.time_s > 0
    assert forward.figures["x copy"].limit == _bench.TARGETS["layer_norm forward"]["copy"] == 1.0
    assert forward.figures["peak mem"].limit == 1.25
    # the forward's output alone is as large as its input: at least 1x is traced
    assert forward.figures["peak mem"].value >= 1.0
    verdicts = [f.passed() for r in rows for f in r.figures.values() if f.limit is not None]
    summary = out.getvalue().splitlines()[-1]
    assert summary.startswith(f"{verdicts.count(True)} PASS, {verdicts.count(False)} MISS")


def test_missing_batch_norm_is_reported_not_fatal(monkeypatch):
    monkeypatch.delattr(normcore, "batch_norm", raising=False)
    out = io.StringIO()
    rows = _bench.run(out=out, plan=TINY)
    batch = [r for r in rows if r.method == "batch_norm" and r.backend == "numpy"]
    assert {r.layout for r in batch} == {"NCHW", "NHWC"}
    assert all("not in this version" in r.note for r in batch)


@pytest.mark.parametrize(
    ("figure", "expected"),
    [
        (_bench.Figure(1.5, 2.0), "1.50 (<=2.00) PASS"),
        (_bench.Figure(2.5, 2.0), "2.50 (<=2.00) MISS"),
        (_bench.Figure(3.0), "3.00"),
        (_bench.Figure(16.0, 15.0, "{:+.1f} us"), "+16.0 us (<=+15.0 us) MISS"),
    ],
)
def test_figure_verdicts(figure, expected):
    assert figure.render() == expected


def test_header_names_the_path_the_numpy_rows_measure(monkeypatch):
    monkeypatch.setattr(config.settings, "numba", False)
    out = io.StringIO()
    _bench.run(out=out, plan=TINY)
    assert "normcore's NumPy path: NumPy-only kernels (NORMCORE_NUMBA=0" in out.getvalue()
    out = io.StringIO()
    with normcore.reference_path():
        _bench.run(out=out, plan=TINY)
    assert "normcore's NumPy path: the reference path (forced" in out.getvalue().splitlines()[0]


def test_jax_rows_time_normcore_against_flax_and_jnp():
    pytest.importorskip("flax", reason="the JAX rows' Flax columns need flax (the test extra)")
    out = io.StringIO()
    rows = [r for r in _bench.run(out=out, plan=TINY) if r.backend == "jax"]
    kinds = {(r.method, r.layout, r.direction) for r in rows}
    assert kinds == {
        ("layer_norm", "jit", "forward"),
        ("layer_norm", "jit", "grad"),
        ("layer_norm", "eager", "forward"),
        ("batch_norm", "N x C, jit", "train"),
    }
    for row in rows:
        assert row.time_s > 0 and all(f.value > 0 for f in row.figures.values())
    graded = {(r.layout, r.direction): r.figures for r in rows}
    assert graded[("jit", "forward")]["vs flax"].limit == 1.05
    assert graded[("eager", "forward")]["vs jnp"].limit == 1.20
    assert "\nJAX arrays, " in out.getvalue()


def test_without_jax_the_jax_table_says_so(monkeypatch):
    from normcore._tools import bench_jax

    def no_jax():
        raise ImportError("No module named 'jax'")

    monkeypatch.setattr(bench_jax, "_libraries", no_jax)
    out = io.StringIO()
    rows = [r for r in _bench.run(out=out, plan=TINY) if r.backend == "jax"]
    assert [r.note for r in rows] == ["jax is not installed (normcore[jax])"]


def test_recurrent_rows_time_normcore_lstm_against_torch_nn():
    """Four LSTM rows (plain and LN, forward and a training step), graded against #16's targets."""
    pytest.importorskip("torch")
    from normcore._tools import bench_recurrent

    rows = list(bench_recurrent.rows(TINY, normcore, _bench._torch()))
    assert [(r.method, r.direction) for r in rows] == [
        ("LSTM plain", "forward"), ("LSTM plain", "fwd+bwd"),
        ("LSTM layer norm", "forward"), ("LSTM layer norm", "fwd+bwd"),
    ]  # fmt: skip
    limits = [r.figures["vs torch.nn.LSTM"].limit for r in rows]
    assert limits == [None, 1.2, 1.5, 1.5]
    assert all(r.time_s > 0 and r.figures["vs torch.nn.LSTM"].value > 0 for r in rows)


def test_recurrent_rows_without_torch_say_so():
    from normcore._tools import bench_recurrent

    (row,) = bench_recurrent.rows(TINY, normcore, None)
    assert row.note == "torch is not installed"


def test_the_kernels_floor_script_runs_and_checks_itself(rng):
    """docs/measurements/numpy_kernels_floor.py, whose figures performance.md
    quotes: every candidate runs on a small array, and its own checks (the
    streaming-store layer norm equals rows_forward bit for bit, the streaming
    copy equals its input) hold. numba's intrinsics break silently otherwise."""
    pytest.importorskip("numba")
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "docs" / "measurements" / "numpy_kernels_floor.py"
    spec = importlib.util.spec_from_file_location("numpy_kernels_floor", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    x = (rng.standard_normal((128, 256)) + 3).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    calls = script.candidates(x, dy)  # asserts its streamed results
    assert {"x.copy()", "layer norm, streaming stores", "batch norm, NCHW"} <= set(calls)
    for call in calls.values():
        call()
    # Rows of odd lengths, starting off 16-byte boundaries: the head and tail
    # of every streamed row take the scalar stores.
    from normcore.backends import _numba_kernels

    for d in (1, 3, 6, 17):
        x = (rng.standard_normal((5, d)) + 3).astype(np.float32)
        y = np.full_like(x, np.nan)
        script._stream_rows(0, 5, x, y)
        assert np.array_equal(y, x)
        expected = _numba_kernels.rows_forward(x, None, None, eps=1e-5, center=True)
        got = [np.full_like(a, np.nan) for a in expected]
        ones, zeros = np.ones(d, np.float32), np.zeros(d, np.float32)
        script._normalize_streamed(0, 5, x, ones, zeros, 1e-5, *got)
        assert all(np.array_equal(a, b) for a, b in zip(got, expected, strict=True))
    with pytest.raises(TypeError, match="float32"):
        script.candidates(x.astype(np.float64), x.astype(np.float64))

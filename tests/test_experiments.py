"""The experiments: LSTMs train; `normcore experiment ...` runs, reproduces, fails cleanly."""

from __future__ import annotations

import importlib.util
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("sklearn")

from normcore.cli import main
from normcore.experiments import batch_size, invariance
from normcore.experiments.rnn_digits import load_digit_sequences, train


@pytest.fixture(scope="module")
def small_data():
    data = load_digit_sequences(seed=0)
    assert data["x_train"].shape[1:] == (8, 8) and data["x_test"].shape[1:] == (8, 8)
    assert data["x_train"].min() >= 0.0 and data["x_train"].max() <= 1.0
    return {"x_train": data["x_train"][:256], "y_train": data["y_train"][:256],
            "x_test": data["x_test"][:128], "y_test": data["y_test"][:128]}  # fmt: skip


@pytest.fixture
def one_torch_thread():
    """Tiny tensors: torch's intra-op threads cost more than they save (see the example)."""
    try:
        import torch
    except ImportError:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("library", ["numpy", "torch"])
@pytest.mark.parametrize("layer_norm", [False, True], ids=["lstm", "ln-lstm"])
def test_training_lowers_the_loss(small_data, library, layer_norm):
    pytest.importorskip(library)
    curves = train(layer_norm=layer_norm, backend=library, hidden=16, epochs=3, lr=2e-2,
                   data=small_data)  # fmt: skip
    losses = curves["train_loss"]
    assert len(losses) == 3 and np.all(np.isfinite(losses))
    assert losses[-1] < 0.7 * losses[0]
    assert curves["test_accuracy"][-1] > 0.3  # chance is 0.1


# -- normcore experiment ... (the command line) --------------------------------------------
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY = {
    "batch-size": ["--epochs", "1", "--hidden", "8"],
    "rnn": ["--epochs", "1", "--hidden", "4"],
    "invariance": ["--epochs", "1"],
}


def _table_lines(text):
    return [line for line in text.splitlines() if line.startswith("|")]


def _run(name, tmp_path, capsys, *extra):
    code = main(["experiment", name, *TINY[name], "--out", str(tmp_path), *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(("name", "rows"), [("batch-size", 6), ("rnn", 2), ("invariance", 18)])
def test_each_experiment_prints_its_table_and_writes_png_and_markdown(name, rows, tmp_path, capsys):
    code, out, _ = _run(name, tmp_path, capsys)
    assert code == 0
    table = _table_lines(out)
    assert len(table) == rows + 2  # header and rule
    assert (tmp_path / f"{name}.png").read_bytes()[:8] == PNG_MAGIC
    assert _table_lines((tmp_path / f"{name}.md").read_text()) == table


@pytest.mark.parametrize("name", ["batch-size", "rnn", "invariance"])
def test_the_same_seed_gives_the_same_table(name, tmp_path, capsys):
    tables = []
    for seed in ("3", "3", "4"):
        code, out, _ = _run(name, tmp_path / seed, capsys, "--seed", seed)
        assert code == 0
        tables.append(_table_lines(out))
    assert tables[0] == tables[1]
    assert tables[0] != tables[2]  # the seed reaches the data split, the weights and the order


def test_batch_size_table_names_every_arm(tmp_path, capsys):
    _, out, _ = _run("batch-size", tmp_path, capsys)
    arms = {tuple(c.strip() for c in line.split("|")[1:3]) for line in _table_lines(out)[2:]}
    assert arms == {(m, b) for m in ("no norm", "batch norm", "layer norm") for b in ("128", "4")}


def test_batch_size_runs_on_torch(tmp_path, capsys):
    pytest.importorskip("torch")
    code, out, _ = _run("batch-size", tmp_path, capsys, "--backend", "torch")
    assert code == 0 and "on torch" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--backend", "nosuchlib"],
            r"unknown backend 'nosuchlib'; the registered adapters are: .*numpy",
        ),
        (["--epochs", "0"], r"--epochs must be >= 1, got 0"),
        (["--seed", "-1"], r"--seed must be >= 0, got -1"),
        (["--hidden", "0"], r"--hidden must be >= 1 and applies to batch-size and rnn, got 0"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(argv, message, tmp_path, capsys):
    code = main(["experiment", "batch-size", *argv, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert re.search(message, err)
    assert not (tmp_path / "batch-size.png").exists()


def test_unusable_out_directory_exits_2_before_any_training(tmp_path, capsys, monkeypatch):
    from normcore.experiments import _runner

    monkeypatch.setitem(_runner.EXPERIMENTS, "invariance", _fail_if_called)
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    for out in (a_file, a_file / "below"):
        code = main(["experiment", "invariance", "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2
        expected = r"normcore experiment: --out '.*' cannot be made a directory: .*\n"
        assert re.fullmatch(expected, err)


def _fail_if_called(*args):
    raise AssertionError("the experiment ran although --out is unusable")


def test_backend_library_not_installed_exits_2_with_the_install_hint(tmp_path, capsys):
    if importlib.util.find_spec("cupy") is not None:
        pytest.skip("cupy is installed")
    code = main(["experiment", "invariance", "--backend", "cupy", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == (
        "normcore experiment: backend 'cupy' needs cupy, which is not installed: "
        "pip install cupy-cuda12x (or the cupy wheel matching your CUDA/ROCm)"
    )


@pytest.mark.parametrize("missing", [("sklearn",), ("matplotlib",), ("sklearn", "matplotlib")])
def test_missing_experiments_extra_exits_2_naming_it(missing, monkeypatch, tmp_path, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in missing else real(name, *a)
    )
    code = main(["experiment", "rnn", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    names = {"sklearn": "scikit-learn", "matplotlib": "matplotlib"}
    assert code == 2
    assert err.startswith(
        f"normcore experiment: the experiments need {', '.join(names[m] for m in missing)}"
    )
    assert err.endswith('pip install "normcore[experiments]"')


def test_the_experiment_modules_import_nothing_optional():
    code = (
        "import sys, normcore.experiments.batch_size, normcore.experiments.invariance, "
        "normcore.experiments.rnn_digits, normcore.experiments._runner; "
        "print(sorted(m for m in ('sklearn', 'matplotlib', 'torch', 'tqdm') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- the invariance table is a property test of normcore's three normalizations ---------
@pytest.mark.parametrize("library", ["numpy", "torch"])
def test_every_measured_cell_of_table_1_agrees_with_the_paper(library):
    module = pytest.importorskip(library)
    dtype = "float32" if library == "torch" else "float64"
    rows = invariance.measure(backend=module, trials=2, dtype=dtype, seed=1)
    assert len(rows) == 18
    cells = {(r.method, r.transformation): r for r in rows}
    assert cells["layer norm", "weight matrix re-centering"].measured_invariant
    assert not cells["batch norm", "single training case re-scaling"].measured_invariant
    limit = invariance.tolerance(dtype)
    for row in rows:
        assert row.measured_invariant == row.paper_invariant, row
        # not borderline: invariant cells are round-off, the others change h visibly
        assert row.deviation < limit / 10 if row.paper_invariant else row.deviation > 1e-2


# -- the batch-size MLP: normcore's gradients and batch norm's inference mode -------------
@pytest.mark.parametrize("norm", ["none", "batch", "layer"])
@pytest.mark.parametrize("correction", [0, 1])
def test_mlp_gradients_equal_finite_differences(norm, correction):
    from normcore.experiments._common import softmax_cross_entropy

    rng = np.random.default_rng(0)
    x, labels = rng.uniform(size=(4, 64)), rng.integers(0, 10, 4)
    onehot = np.eye(10)[labels]
    model = batch_size._MLP(np, np, None, np.float64, norm=norm, hidden=5, seed=0,
                            correction=correction)  # fmt: skip
    logits, saved = model.forward(x, training=True)
    grads = model.backward(saved, softmax_cross_entropy(np, logits, onehot)[1])

    def loss():
        return float(softmax_cross_entropy(np, model.forward(x, training=True)[0], onehot)[0])

    for name in ("W1", "W2", "W3"):
        w = model.weights[name]
        for index in [(0, 0), (3, 2), (4, 1)]:
            old = w[index]
            w[index] = old + 1e-6
            up = loss()
            w[index] = old - 1e-6
            down = loss()
            w[index] = old
            assert grads[name][index] == pytest.approx((up - down) / 2e-6, rel=1e-5, abs=1e-9)


def test_batch_norm_arm_evaluates_with_running_statistics():
    data = batch_size.load_digit_vectors(0)
    small = {k: v[:64] for k, v in data.items()}
    model = batch_size._MLP(np, np, None, np.float64, norm="batch", hidden=8, seed=0,
                            correction=1)  # fmt: skip
    x = small["x_train"][:8]
    model.forward(x, training=True)
    one, _ = model.forward(x[:1], training=False)  # one example: only fixed statistics can do it
    all_, _ = model.forward(x, training=False)
    np.testing.assert_allclose(one, all_[:1], rtol=1e-12)  # independent of the other examples
    batch_mode, _ = model.forward(x, training=True)
    assert np.max(np.abs(batch_mode - all_)) > 1e-3  # inference really differs from training


def test_lstm_digits_example_writes_under_normcore_results(tmp_path, monkeypatch, capsys):
    """As the experiments do: nothing lands in the current directory itself."""
    pytest.importorskip("matplotlib")
    path = pathlib.Path(__file__).resolve().parent.parent / "examples" / "lstm_digits.py"
    spec = importlib.util.spec_from_file_location("lstm_digits", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    monkeypatch.chdir(tmp_path)
    example.main(["--epochs", "1", "--hidden", "4"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["normcore-results"]
    assert [p.name for p in (tmp_path / "normcore-results").iterdir()] == ["lstm_digits.png"]
    assert "wrote normcore-results/lstm_digits.png" in capsys.readouterr().out


def _figures():
    """docs/experiments_figures.py, the script that writes the page's figures."""
    path = pathlib.Path(__file__).resolve().parent.parent / "docs" / "experiments_figures.py"
    spec = importlib.util.spec_from_file_location("experiments_figures", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("key", ["batch-size table", "rnn table", "invariance table"])
def test_docs_tables_are_what_the_code_gives(key, tmp_path):
    """docs/experiments.md's NumPy tables, run again at the defaults, to the last digit.

    Training amplifies round-off, so the tables depend on the libraries and the
    BLAS kernel as well as on the code: they are compared on the platform the
    page names (the page says how to regenerate them).
    """
    pytest.importorskip("matplotlib")
    figures = _figures()
    page = figures.PAGE.read_text()
    recorded = figures.section(page, "platform").rpartition(", on ")[0]
    if recorded != figures.platform_key():
        pytest.skip(
            f"the tables were made on {recorded}, this is {figures.platform_key()}: "
            "python docs/experiments_figures.py regenerates them here"
        )
    name, backend = figures.TABLES[key]
    table, _ = figures.run(name, backend, tmp_path)
    assert [line.strip() for line in _table_lines(table)] == _table_lines(
        figures.section(page, key)
    )

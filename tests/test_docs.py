"""The Python examples in the documentation run (those needing a missing library are skipped)."""

from __future__ import annotations

import importlib.util
import pathlib
import re
import runpy

import pytest

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"
BLOCKS = [
    pytest.param(code, id=f"{page.stem}-{i}")
    for page in sorted(DOCS.glob("*.md"))
    for i, code in enumerate(re.findall(r"```python\n(.*?)\n```", page.read_text(), flags=re.S))
]


# What an example needs beyond normcore: the libraries it imports, and the experiments'
# packages (the "experiments" extra) for examples that use normcore.experiments.
NEEDS = {
    "torch": ("torch",),
    "cupy": ("cupy",),
    "jax": ("jax",),
    "dask": ("dask",),
    "flax": ("flax",),
    "optax": ("optax",),
    "normcore.flax": ("flax",),
    "normcore.experiments": ("sklearn", "matplotlib"),
}


@pytest.mark.parametrize("code", BLOCKS)
def test_python_example_runs(code, tmp_path, monkeypatch):
    for imported, libraries in NEEDS.items():
        if not re.search(rf"^(import|from) {re.escape(imported)}\b", code, flags=re.M):
            continue
        for library in libraries:
            if importlib.util.find_spec(library) is None:
                pytest.skip(f"{library} is not installed")
    monkeypatch.chdir(tmp_path)  # examples may write files
    exec(compile(code, "<docs example>", "exec"), {})


def test_the_plugin_page_shows_the_example_plugin_as_it_is():
    """docs/plugins.md's complete plugin is examples/plugin/normcore_strict.py, to the letter."""
    page = (DOCS / "plugins.md").read_text()
    source = (DOCS.parent / "examples" / "plugin" / "normcore_strict.py").read_text()
    shown = re.search(r"```python\n# normcore_strict.py\n(.*?)```", page, flags=re.S)
    assert shown is not None, "plugins.md must show '# normcore_strict.py' in a python block"
    assert shown.group(1) == source


def test_quickstart_shows_a_gradient_that_is_not_zero(capsys):
    """The README's first look: its layer_norm_backward is that of a float64 formula, not 0.

    (Before, it printed the gradient of sum(y), which layer norm makes zero.)
    """
    import numpy as np
    from _support import finite_difference, reference_layer_norm

    quickstart = DOCS.parent / "examples" / "quickstart.py"
    namespace = runpy.run_path(str(quickstart), run_name="__main__")
    out = capsys.readouterr().out
    x, gain, bias, dy, grads = (namespace[k] for k in ("x", "gain", "bias", "dy", "grads"))
    x64, gain64, bias64 = (np.asarray(a, np.float64) for a in (x, gain, bias))
    want_dx = finite_difference(lambda a: reference_layer_norm(a, gain64, bias64), x64, dy)
    want_dgain = finite_difference(lambda g: reference_layer_norm(x64, g, bias64), gain64, dy)
    assert np.abs(want_dx).max() > 0.5  # the example's point: a gradient that is not zero
    np.testing.assert_allclose(grads.dx, want_dx, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(grads.dgain, want_dgain, rtol=1e-4, atol=1e-4)
    assert "dL/dx    :" in out and "dL/dgain :" in out
    if importlib.util.find_spec("torch") is not None:
        assert "autograd's dL/dx equals layer_norm_backward's: True" in out


def test_the_readme_describes_the_quickstart():
    readme = (DOCS.parent / "README.md").read_text()
    assert "`python examples/quickstart.py` normalizes NumPy and torch arrays" in readme
    assert "gradients" in readme.split("examples/quickstart.py", 1)[1].split("\n\n", 1)[0]

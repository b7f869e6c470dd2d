"""The Python examples in the documentation run (those needing a missing library are skipped)."""

from __future__ import annotations

import importlib.util
import pathlib
import re

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

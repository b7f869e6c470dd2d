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


@pytest.mark.parametrize("code", BLOCKS)
def test_python_example_runs(code, tmp_path, monkeypatch):
    for library in ("torch", "cupy"):
        if re.search(rf"^import {library}$", code, flags=re.M) and not importlib.util.find_spec(
            library
        ):
            pytest.skip(f"{library} is not installed")
    monkeypatch.chdir(tmp_path)  # examples may write files
    exec(compile(code, "<docs example>", "exec"), {})

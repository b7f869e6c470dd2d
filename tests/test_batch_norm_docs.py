"""The runnable example of docs/batch-norm.md runs and its assertions hold."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "batch-norm.md"


def test_batch_norm_page_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert blocks, f"no python example in {DOC}"
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), {})

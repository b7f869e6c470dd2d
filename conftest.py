"""Collection rules for the whole tree (doctests included): what needs an optional library.

``normcore/torch/`` imports torch, so its doctests are collected only when
torch is installed; a docstring example elsewhere that imports an optional
library that is missing is skipped, with that reason. Everything else is
collected and run in every environment.
"""

from __future__ import annotations

import importlib.util
import re

import pytest

OPTIONAL = ("torch", "cupy")
MISSING = [name for name in OPTIONAL if importlib.util.find_spec(name) is None]

collect_ignore_glob: list[str] = []
if "torch" in MISSING:
    collect_ignore_glob.append("normcore/torch/*")


def pytest_report_header(config):
    if "torch" in MISSING:
        return "not collected: normcore/torch/ doctests (torch is not installed)"
    return None


def pytest_collection_modifyitems(config, items):
    for item in items:
        test = getattr(item, "dtest", None)  # a doctest item
        if test is None:
            continue
        source = "".join(example.source for example in test.examples)
        for name in MISSING:
            if re.search(rf"\bimport [\w, ]*\b{name}\b", source):
                item.add_marker(pytest.mark.skip(reason=f"{name} is not installed"))

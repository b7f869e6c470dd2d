"""Collection rules for the whole tree (doctests included): what needs an optional library.

``normcore/torch/`` imports torch and ``normcore/flax/`` flax, so their
doctests are collected only when those are installed; a docstring example
elsewhere that imports an optional library that is missing is skipped, with
that reason. Everything else is collected and run in every environment.
"""

from __future__ import annotations

import importlib.util
import re

import pytest

OPTIONAL = ("torch", "cupy", "jax", "flax")
MISSING = [name for name in OPTIONAL if importlib.util.find_spec(name) is None]
# the packages that import an optional library as they are imported
PACKAGES = {"torch": "normcore/torch", "flax": "normcore/flax"}

collect_ignore_glob: list[str] = [f"{PACKAGES[name]}/*" for name in MISSING if name in PACKAGES]
if "torch" in MISSING:  # what the spawned processes of the distributed tests import
    collect_ignore_glob.append("tests/_distributed_workers.py")


def pytest_report_header(config):
    skipped = [f"{PACKAGES[n]}/ ({n} is not installed)" for n in MISSING if n in PACKAGES]
    return f"doctests not collected: {', '.join(skipped)}" if skipped else None


def pytest_collection_modifyitems(config, items):
    for item in items:
        test = getattr(item, "dtest", None)  # a doctest item
        if test is None:
            continue
        source = "".join(example.source for example in test.examples)
        for name in MISSING:
            if re.search(rf"\bimport [\w, ]*\b{name}\b", source):
                item.add_marker(pytest.mark.skip(reason=f"{name} is not installed"))

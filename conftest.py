"""Collection rules for the whole tree (doctests included): what needs an optional library.

``normcore/torch/`` imports torch and ``normcore/flax/`` flax, so their
doctests are collected only when those are installed; a docstring example
elsewhere that imports an optional library that is missing is skipped, with
that reason. Everything else is collected and run in every environment.

The terminal summary ends with the skips grouped by reason ("4411 skipped:
cupy is not installed"): thousands of parametrized skips say in a few lines
what this environment lacks, where ``-rs`` would list every location.
"""

from __future__ import annotations

import importlib.util
import re
from collections import Counter

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


def _skip_reason(report) -> str:
    """The reason of a skipped test's report, without pytest's ``"Skipped: "`` prefix."""
    longrepr = report.longrepr
    message = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else longrepr
    return str(message).removeprefix("Skipped: ")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """One line per distinct skip reason with its count, the most frequent first."""
    counts = Counter(_skip_reason(report) for report in terminalreporter.stats.get("skipped", []))
    if not counts:
        return
    terminalreporter.write_sep("=", "skipped, by reason")
    for reason, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        terminalreporter.write_line(f"{count} skipped: {reason}")

"""Collection rules for the whole tree (doctests included): what needs an optional library.

``normcore/torch/`` imports torch, so its doctests are collected only when
torch is installed; the run then says so in its header. Everything else is
collected in every environment.
"""

from __future__ import annotations

import importlib.util

collect_ignore_glob: list[str] = []
_NOT_COLLECTED: list[str] = []

if importlib.util.find_spec("torch") is None:
    collect_ignore_glob.append("normcore/torch/*")
    _NOT_COLLECTED.append("normcore/torch/ doctests (torch is not installed)")


def pytest_report_header(config):
    if _NOT_COLLECTED:
        return "not collected: " + "; ".join(_NOT_COLLECTED)
    return None

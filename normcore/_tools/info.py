"""What ``normcore info`` reports: version, adapters, library versions, devices."""

from __future__ import annotations

import platform
from importlib import metadata

from .._plumbing.registry import ENTRY_POINT_GROUP, adapters, load_errors

__all__ = ["info_lines"]


def info_lines() -> list[str]:
    """Return the lines of the ``normcore info`` report."""
    from .. import __version__

    lines = [
        f"normcore {__version__} (Python {platform.python_version()}, {platform.machine()})",
        f"array-api-compat {metadata.version('array-api-compat')}",
        f"adapters (entry-point group {ENTRY_POINT_GROUP!r}):",
    ]
    points = {ep.name: ep.value for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}
    for adapter in adapters():
        version = adapter.library_version()
        if version is None:
            state, devices = "not installed", "-"
        else:
            try:
                devices = ", ".join(adapter.devices()) or "none"
            except Exception as error:  # a broken driver must not hide the rest of the report
                devices = f"unavailable ({type(error).__name__}: {error})"
            state = f"{adapter.library} {version}"
        source = points.get(adapter.name, "?")
        lines.append(f"  {adapter.name:<8} {state:<24} devices: {devices}  [{source}]")
    for name, error in load_errors().items():
        lines.append(f"  {name:<8} error (reported once, worked around): {error}")
    return lines

"""Adapter discovery (entry points) and the per-array-type adapter lookup.

Adapters are found through the ``normcore.backends`` entry-point group the
first time an array needs one, never at ``import normcore``. A broken
third-party adapter cannot break normcore itself: one that fails to load is
skipped and an ``owns`` that raises counts as "not mine", each reported once
with a warning. Arrays that no adapter owns get :data:`ARRAY_API`, the plain
:class:`~normcore.adapter.Adapter`: the reference path with the default
accumulation rule.
"""

from __future__ import annotations

import warnings
from typing import Any

from ..adapter import Adapter
from .compat import library_label

__all__ = [
    "ARRAY_API",
    "ENTRY_POINT_GROUP",
    "adapter_for",
    "adapters",
    "load_errors",
    "register",
]

ENTRY_POINT_GROUP = "normcore.backends"


class _ArrayAPIAdapter(Adapter):
    """Any Array API library without an adapter of its own: the reference path only."""

    name = "array-api"

    def owns(self, x: Any) -> bool:
        return False


#: The adapter of arrays that no registered adapter owns.
ARRAY_API: Adapter = _ArrayAPIAdapter()

_ADAPTERS: list[Adapter] | None = None
_LOAD_ERRORS: dict[str, str] = {}
_ADAPTER_BY_TYPE: dict[type, Adapter] = {}


def adapters() -> list[Adapter]:
    """Return the registered adapters, loading their entry points on first use."""
    global _ADAPTERS
    if _ADAPTERS is None:
        # Imported here, not at ``import normcore``: it costs more than the rest of normcore.
        from importlib import metadata

        found: list[Adapter] = []
        for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
            try:
                adapter = entry_point.load()
                if not isinstance(adapter, Adapter):
                    raise TypeError(
                        "expected a normcore.adapter.Adapter instance, got "
                        f"{type(adapter).__name__}"
                    )
            except Exception as error:  # a broken plugin must not break normcore
                _report_broken(
                    entry_point.name,
                    error,
                    f"normcore could not load the backend adapter {entry_point.name!r} "
                    f"({entry_point.value}): {error}; arrays of that library run on the "
                    "reference path",
                )
                continue
            if all(existing.name != adapter.name for existing in found):
                found.append(adapter)
        _ADAPTERS = found
    return _ADAPTERS


def register(adapter: Adapter) -> None:
    """Add ``adapter`` as if it were installed (for tests of a plugin that is not installed).

    It comes first: it answers for its arrays before the installed adapters.
    """
    if not isinstance(adapter, Adapter):
        raise TypeError(f"adapter must be a normcore.adapter.Adapter, got {type(adapter).__name__}")
    found = [a for a in adapters() if a.name != adapter.name]
    global _ADAPTERS
    _ADAPTERS = [adapter, *found]
    _ADAPTER_BY_TYPE.clear()


def _report_broken(name: str, error: Exception, message: str) -> None:
    """Record a plugin's failure and warn about it once: normcore itself goes on."""
    if name not in _LOAD_ERRORS:
        _LOAD_ERRORS[name] = f"{type(error).__name__}: {error}"
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def _owns(adapter: Adapter, x: Any) -> bool:
    """``adapter.owns(x)``; an adapter whose check raises owns nothing."""
    try:
        return adapter.is_loaded() and bool(adapter.owns(x))
    except Exception as error:  # e.g. a plugin that assumes every array is its own
        _report_broken(
            adapter.name,
            error,
            f"the backend adapter {adapter.name!r} raised {type(error).__name__} when asked "
            f"whether it owns a {library_label(x)}: {error}; normcore takes that as no "
            "(arrays it does answer for are unaffected)",
        )
        return False


def load_errors() -> dict[str, str]:
    """Return ``{adapter name: error}`` for adapters that failed to load or to answer."""
    adapters()
    return dict(_LOAD_ERRORS)


def adapter_for(x: Any) -> Adapter:
    """Return the adapter that owns the array ``x`` (:data:`ARRAY_API` when none does)."""
    kind = type(x)
    try:
        return _ADAPTER_BY_TYPE[kind]
    except KeyError:
        pass
    owner = next((a for a in adapters() if _owns(a, x)), ARRAY_API)
    _ADAPTER_BY_TYPE[kind] = owner
    return owner

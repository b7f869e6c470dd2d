"""Adapter discovery (entry points), per-array adapter lookup, fast-path dispatch.

Adapters are found through the ``normcore.backends`` entry-point group the
first time an array needs one, never at ``import normcore``. A broken
third-party adapter cannot break normcore itself: one that fails to load is
skipped, an ``owns`` that raises counts as "not mine", a ``fast_paths`` that
raises sends that library to the reference path, each reported once with a
warning.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import warnings
from collections.abc import Callable, Iterator
from importlib import metadata
from typing import Any

from ._adapter import Adapter
from ._compat import library_label

__all__ = [
    "ENTRY_POINT_GROUP",
    "REFERENCE_PATH_ENV",
    "adapter_for",
    "adapters",
    "fast_path",
    "reference_path",
    "using_reference_path",
]

ENTRY_POINT_GROUP = "normcore.backends"
REFERENCE_PATH_ENV = "NORMCORE_REFERENCE_PATH"

_ADAPTERS: list[Adapter] | None = None
_LOAD_ERRORS: dict[str, str] = {}
_ADAPTER_BY_TYPE: dict[type, Adapter | None] = {}
_FAST_PATHS: dict[str, dict[str, Callable[..., Any]]] = {}


# Read once: the variable configures a whole process (a per-call lookup would
# cost more than the torch adapter's whole dispatch).
_ENV_FORCES_REFERENCE = os.environ.get(REFERENCE_PATH_ENV, "").strip().lower() in {
    "1",
    "true",
    "yes",
    "on",
}
_FORCE_REFERENCE = contextvars.ContextVar("normcore_force_reference", default=None)
# Whether any reference_path() block was ever entered in this process. Until
# then no context can hold a setting, so the lookup skips the ContextVar, which
# torch.compile cannot trace (a graph break in every normcore call).
_context_switch_used = False


def adapters() -> list[Adapter]:
    """Return the registered adapters, loading their entry points on first use."""
    global _ADAPTERS
    if _ADAPTERS is None:
        found: list[Adapter] = []
        for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
            try:
                adapter = entry_point.load()
                if not isinstance(adapter, Adapter):
                    raise TypeError(
                        f"expected a normcore.Adapter instance, got {type(adapter).__name__}"
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


def adapter_for(x: Any) -> Adapter | None:
    """Return the adapter that owns the array ``x``, or None (reference path only)."""
    kind = type(x)
    try:
        return _ADAPTER_BY_TYPE[kind]
    except KeyError:
        pass
    owner = next((a for a in adapters() if _owns(a, x)), None)
    _ADAPTER_BY_TYPE[kind] = owner
    return owner


def using_reference_path() -> bool:
    """Return whether fast paths are currently disabled.

    True inside :func:`reference_path` or when the environment variable
    ``NORMCORE_REFERENCE_PATH`` was set to ``1``/``true``/``yes``/``on`` when
    normcore was imported.
    """
    if not _context_switch_used:
        return _ENV_FORCES_REFERENCE
    forced = _FORCE_REFERENCE.get()
    return _ENV_FORCES_REFERENCE if forced is None else forced


@contextlib.contextmanager
def reference_path(enabled: bool = True) -> Iterator[None]:
    """Force (or, with ``enabled=False``, allow again) the reference Array API path.

    Inside the block every normcore call runs the backend-neutral reference
    implementation, ignoring the fast kernels that adapters register. Use it to
    check a result or a gradient against the reference, or to rule a fast path
    out while debugging. The setting is per thread / per asyncio task. Setting
    the environment variable ``NORMCORE_REFERENCE_PATH=1`` has the same effect
    for a whole process.

    Parameters
    ----------
    enabled : bool, default True
        True forces the reference path; False re-enables fast paths inside an
        outer ``reference_path()`` block or despite the environment variable.

    Examples
    --------
    >>> import numpy as np
    >>> import normcore
    >>> x = np.arange(6.0).reshape(2, 3)
    >>> with normcore.reference_path():
    ...     y = normcore.layer_norm(x)
    >>> bool(np.allclose(y, normcore.layer_norm(x)))
    True
    """
    global _context_switch_used
    _context_switch_used = True
    token = _FORCE_REFERENCE.set(bool(enabled))
    try:
        yield
    finally:
        _FORCE_REFERENCE.reset(token)


def fast_path(adapter: Adapter | None, primitive: str) -> Callable[..., Any] | None:
    """Return the adapter's fast implementation of ``primitive``, if any and allowed."""
    if adapter is None or using_reference_path():
        return None
    table = _FAST_PATHS.get(adapter.name)
    if table is None:
        try:
            table = dict(adapter.fast_paths())
        except Exception as error:  # a broken plugin: its arrays take the reference path
            _report_broken(
                adapter.name,
                error,
                f"the backend adapter {adapter.name!r} could not list its fast paths "
                f"({type(error).__name__}: {error}); its arrays run on the reference path",
            )
            table = {}
        _FAST_PATHS[adapter.name] = table
    return table.get(primitive)

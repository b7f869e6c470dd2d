"""normcore's settings: the environment variables, read once, and the reference-path switch.

Every environment variable normcore reads is parsed here, when ``normcore`` is
imported, and nowhere else:

=========================  ==========================================================
``NORMCORE_REFERENCE_PATH``  ``1``/``true``/``yes``/``on``: every call runs the
                             backend-neutral reference path (as inside
                             :func:`normcore.reference_path`). Default: off.
``NORMCORE_NUMBA``           ``0``/``false``/``no``/``off``: NumPy arrays use the
                             NumPy-only kernels. Default (unset, or ``1``/...): the
                             compiled numba kernels (numba is a dependency; if it
                             cannot be imported, a warning says so and the NumPy-only
                             kernels run).
``NORMCORE_NUM_THREADS``     A whole number >= 1: the most threads a NumPy-array
                             kernel uses. Default: ``OMP_NUM_THREADS`` (below), else
                             every core (``os.cpu_count()``).
``OMP_NUM_THREADS``          Read only where ``NORMCORE_NUM_THREADS`` is unset, as the
                             limit OpenBLAS and torch also follow (``torchrun`` sets
                             it to 1 per process): its first whole number (``"4"``,
                             or ``"4,2"`` for nested OpenMP), at most every core.
                             OpenMP's variable, not normcore's: a value normcore
                             cannot read is left to OpenMP and not used here.
=========================  ==========================================================

A value of a ``NORMCORE_`` variable that is not understood raises
``ValueError`` at ``import normcore``, naming the variable and what it
accepts. Changing a variable later has no effect: the values live in
:data:`settings`, which tests and benchmarks may change for a process.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

__all__ = ["Settings", "from_environment", "reference_path", "settings", "using_reference_path"]

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


@dataclass
class Settings:
    """The process-wide settings (see the module docstring for their variables)."""

    reference_path: bool = False
    numba: bool = True
    num_threads: int | None = None
    #: OMP_NUM_THREADS's limit, the default of num_threads (None: unset or unreadable).
    omp_num_threads: int | None = None


def _flag(environ: Mapping[str, str], name: str, default: bool = False) -> bool:
    value = environ.get(name, "").strip().lower()
    if not value:  # unset or empty: the default
        return default
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(
        f"the environment variable {name}={environ[name]!r} is not understood: set it to "
        f"one of {', '.join(_TRUE)} (on) or {', '.join(_FALSE)} (off), or unset it"
    )


def _count(environ: Mapping[str, str], name: str) -> int | None:
    value = environ.get(name, "").strip()
    if not value:
        return None
    if _whole(value) and int(value) >= 1:
        return int(value)
    raise ValueError(
        f"the environment variable {name}={environ[name]!r} is not understood: set it to a "
        "whole number >= 1 (the most threads to use), or unset it"
    )


def _omp_count(environ: Mapping[str, str]) -> int | None:
    """The first level of ``OMP_NUM_THREADS`` (``"4"``, ``"4,2"``), or None.

    Not normcore's variable: what normcore cannot read raises nothing here
    and is left to the OpenMP runtimes, which judge it themselves.
    """
    first = environ.get("OMP_NUM_THREADS", "").split(",")[0].strip().removeprefix("+")
    return int(first) if _whole(first) and int(first) >= 1 else None


def _whole(value: str) -> bool:
    """Whether ``value`` is ASCII digits only (``str.isdigit`` also takes "²" and "٣")."""
    return value.isascii() and value.isdigit()


def from_environment(environ: Mapping[str, str] = os.environ) -> Settings:
    """Parse normcore's environment variables (and ``OMP_NUM_THREADS``);
    ``ValueError`` for a value of a ``NORMCORE_`` variable not understood."""
    return Settings(
        reference_path=_flag(environ, "NORMCORE_REFERENCE_PATH"),
        numba=_flag(environ, "NORMCORE_NUMBA", default=True),
        num_threads=_count(environ, "NORMCORE_NUM_THREADS"),
        omp_num_threads=_omp_count(environ),
    )


#: The settings of this process, read from the environment at ``import normcore``.
settings = from_environment()


class _Forced(threading.local):
    """The reference_path() setting of this thread (None: none set, the process's holds)."""

    value: bool | None = None


# Per thread, and a thread-local rather than a ContextVar: torch.compile traces an
# attribute of a threading.local (and guards on it, recompiling when a block changes
# it), while ContextVar.get is a graph break for dynamo, which made every compiled
# normcore call break once any reference_path() block had been entered.
_FORCED = _Forced()
# Whether any reference_path() block was ever entered in this process. Until
# then no thread can hold a setting, so the lookup is the process's setting alone.
_context_switch_used = False


def using_reference_path() -> bool:
    """Return whether fast paths are currently disabled.

    True inside :func:`reference_path`, or when ``NORMCORE_REFERENCE_PATH``
    was set to ``1``/``true``/``yes``/``on`` when normcore was imported.
    """
    if not _context_switch_used:
        return settings.reference_path
    forced = _FORCED.value
    return settings.reference_path if forced is None else forced


@contextlib.contextmanager
def reference_path(enabled: bool = True) -> Iterator[None]:
    """Force (or, with ``enabled=False``, allow again) the reference Array API path.

    Inside the block every normcore call runs the backend-neutral reference
    implementation, ignoring the fast kernels of the adapters. Use it to
    check a result or a gradient against the reference, or to rule a fast path
    out while debugging. The setting is per thread (a block around an
    ``await`` holds for whatever else runs on that thread meanwhile). Setting
    the environment variable ``NORMCORE_REFERENCE_PATH=1`` has the same effect
    for a whole process.

    Parameters
    ----------
    enabled : bool, default True
        True forces the reference path; False re-enables fast paths inside an
        outer ``reference_path()`` block or despite the environment variable.

    Raises
    ------
    TypeError
        If ``enabled`` is not a bool.

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
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be True or False, got {type(enabled).__name__}")
    global _context_switch_used
    _context_switch_used = True
    previous, _FORCED.value = _FORCED.value, enabled
    try:
        yield
    finally:
        _FORCED.value = previous

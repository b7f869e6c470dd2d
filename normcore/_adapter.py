"""The adapter protocol: what a backend plugin provides to normcore.

An adapter describes one array library. normcore's math never needs one (it is
written against the Array API standard); adapters only add what differs per
library: a faster kernel for a primitive, the accumulation dtype for
low-precision floats, and the devices the library can see.

Third-party adapters subclass :class:`Adapter` and register an instance under
the ``normcore.backends`` entry-point group; see ``docs/architecture.md``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["Adapter"]


class Adapter:
    """Base class of a normcore backend adapter.

    Subclasses set :attr:`name` and :attr:`library` and override what their
    library needs. Adapter modules must not import their library at import
    time: normcore loads every registered adapter, and a user who has only
    NumPy must never import torch or cupy.

    Attributes
    ----------
    name : str
        Short name shown by ``normcore info`` and accepted by ``--backend``.
    library : str
        Top-level module name of the array library (``"torch"``). An array is
        only offered to :meth:`owns` once this module is in ``sys.modules``,
        so detection never imports anything.
    install_hint : str
        How to install the library, shown when it is missing (default
        ``pip install <library>``).
    """

    name: str = ""
    library: str = ""
    install_hint: str = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__dict__.get("install_hint") and cls.library:
            cls.install_hint = f"pip install {cls.library}"

    def owns(self, x: Any) -> bool:
        """Return whether ``x`` is an array of this adapter's library.

        Only called when :attr:`library` is already imported.
        """
        raise NotImplementedError

    def accumulation_dtype(self, xp: Any, dtype: Any) -> Any:
        """Return the dtype in which statistics of ``dtype`` data are accumulated.

        The default accumulates floats narrower than 32 bits (float16,
        bfloat16) in float32 and everything else in its own dtype: the rule the
        core applies to arrays that no adapter owns.
        """
        from ._primitive import default_accumulation_dtype

        return default_accumulation_dtype(xp, dtype)

    def library_version(self) -> str | None:
        """Return the installed library's version, or None if it is not installed."""
        from importlib import metadata

        try:
            return metadata.version(self.library)
        except metadata.PackageNotFoundError:
            return None

    def devices(self) -> list[str]:
        """Return human-readable names of the devices this library can use."""
        return []

    def check_devices(self) -> list[Any]:
        """Return the devices ``normcore check`` tests, as ``asarray(..., device=)`` takes them.

        Called only when the library is installed; may import it. The default
        is the library's default device.
        """
        import importlib

        from ._compat import device_of, resolve_creation

        xp = resolve_creation(importlib.import_module(self.library))[0]
        return [device_of(xp.zeros(1))]

    def fast_paths(self) -> Mapping[str, Callable[..., Any]]:
        """Return faster implementations of core primitives, keyed by primitive name.

        Called once, the first time an array of this library reaches a
        primitive, so it may import the library. Each implementation takes the
        same arguments as the reference primitive in ``normcore._primitive``
        and returns ``NotImplemented`` for a call it does not handle, which
        then runs on the reference path.
        """
        return {}

    def is_loaded(self) -> bool:
        """Return whether the adapter's library has been imported by anyone."""
        # A library that failed to import (or was blocked) is None in sys.modules.
        return sys.modules.get(self.library) is not None

    def __repr__(self) -> str:
        return f"<normcore adapter {self.name!r} for {self.library!r}>"

"""The one module that imports ``array_api_compat``.

Everything else in normcore asks this module for an array's namespace, device
and a readable name of its library, so that a change in how namespaces are
resolved happens in one place.
"""

from __future__ import annotations

from typing import Any

import array_api_compat

__all__ = ["device_of", "is_array", "library_label", "namespace_of"]

# ``array_namespace`` inspects the array on every call (about 9 us for NumPy);
# the namespace depends on the array type only, so cache it per type.
_NAMESPACE_BY_TYPE: dict[type, Any] = {}


def is_array(obj: object) -> bool:
    """Return whether ``obj`` is an array of a library normcore can work with."""
    return type(obj) in _NAMESPACE_BY_TYPE or array_api_compat.is_array_api_obj(obj)


def namespace_of(x: Any) -> Any:
    """Return the Array API namespace of the array ``x`` (cached per type)."""
    kind = type(x)
    xp = _NAMESPACE_BY_TYPE.get(kind)
    if xp is None:
        xp = array_api_compat.array_namespace(x)
        _NAMESPACE_BY_TYPE[kind] = xp
    return xp


def device_of(x: Any) -> Any:
    """Return the device of the array ``x``, as its library names it."""
    return array_api_compat.device(x)


def library_label(obj: object) -> str:
    """Return a short readable name of an object's type, such as ``numpy.ndarray``."""
    kind = type(obj)
    root = kind.__module__.split(".")[0]
    return f"{root}.{kind.__qualname__}" if root != "builtins" else kind.__qualname__

"""The one module that imports ``array_api_compat``: namespaces, devices, crossing libraries.

Everything else in normcore asks this module for an array's namespace, device
and a readable name of its library, so that a change in how namespaces are
resolved happens in one place.
"""

from __future__ import annotations

import sys
from typing import Any

import array_api_compat

__all__ = [
    "device_of",
    "empty_on",
    "is_array",
    "library_label",
    "library_name",
    "namespace_of",
    "requiring_grad_like",
    "resolve_creation",
    "resolve_device",
    "to_device",
    "to_numpy",
    "without_grad",
]

# ``array_namespace`` inspects the array on every call (about 9 us for NumPy);
# the namespace depends on the array type only, so cache it per type.
_NAMESPACE_BY_TYPE: dict[type, Any] = {}


# NumPy array types normcore refuses, with why: messages that name them say it.
_REFUSED = {
    "numpy.ma.MaskedArray": "a masked array, whose mask normcore would ignore: pass "
    "its .filled(value) or only the unmasked values",
    "numpy.matrix": "always 2-D, with * as matrix product: pass numpy.asarray(...) of it",
}


def is_array(obj: object) -> bool:
    """Return whether ``obj`` is an array of a library normcore can work with.

    NumPy masked arrays and ``numpy.matrix`` are not (see ``_REFUSED``).
    """
    kind = type(obj)
    if kind in _NAMESPACE_BY_TYPE:
        return True
    if _refusal(kind) is not None:
        return False
    return array_api_compat.is_array_api_obj(obj)


def _refusal(kind: type) -> str | None:
    """Why arrays of type ``kind`` are refused (a NumPy subclass above), or None."""
    if not kind.__module__.startswith("numpy"):
        return None
    for base in kind.__mro__:
        reason = _REFUSED.get(f"{base.__module__.removesuffix('.core')}.{base.__qualname__}")
        if reason is not None:
            return reason
    return None


def namespace_of(x: Any) -> Any:
    """Return the Array API namespace of the array ``x`` (cached per type)."""
    kind = type(x)
    xp = _NAMESPACE_BY_TYPE.get(kind)
    if xp is None:
        xp = _numpy_namespace(x) or array_api_compat.array_namespace(x)
        _NAMESPACE_BY_TYPE[kind] = xp
    return xp


def _numpy_namespace(x: Any) -> Any:
    """``numpy`` itself for NumPy >= 2.1 arrays, whose main namespace is the Array API's.

    array-api-compat's NumPy wrapper (needed for NumPy 1.x) imports numpy.f2py and
    numpy.testing when it loads: about 0.3 s of a user's first normcore call.
    """
    numpy = sys.modules.get("numpy")
    if numpy is None or not isinstance(x, numpy.ndarray | numpy.generic):
        return None
    major, minor = (int(part) for part in numpy.__version__.split(".")[:2])
    return numpy if (major, minor) >= (2, 1) else None


def device_of(x: Any) -> Any:
    """Return the device of the array ``x``, as its library names it."""
    # The standard's ``.device`` attribute is a plain lookup; array_api_compat's
    # helper (several type probes) is only needed for libraries that lack it.
    found = getattr(x, "device", None)
    return array_api_compat.device(x) if found is None or callable(found) else found


def has_no_values(x: Any) -> bool:
    """Whether ``x`` has shape and dtype but no values to read (a torch ``meta`` tensor)."""
    return getattr(getattr(x, "device", None), "type", None) == "meta"


def to_device(x: Any, device: Any) -> Any:
    """Return ``x`` on ``device`` (a copy only when it has to move)."""
    return array_api_compat.to_device(x, device)


def to_numpy(x: Any) -> Any:
    """Return a NumPy array with the values of ``x``, an array of any supported library.

    For crossing libraries on purpose (loading a torch state dict into a NumPy
    module, printing results): device arrays are copied to the host, torch
    tensors are detached, and bfloat16 (which NumPy lacks) becomes float32,
    which holds every bfloat16 value exactly.
    """
    import numpy

    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return (x.float() if x.dtype == torch.bfloat16 else x).numpy()
    cupy = sys.modules.get("cupy")
    if cupy is not None and isinstance(x, cupy.ndarray):
        return x.get()
    try:
        return numpy.asarray(x)
    except (RuntimeError, TypeError, ValueError, BufferError):
        # Another library's array off the host (which NumPy cannot read in place):
        # DLPack copies it to the CPU, the standard's way to cross libraries.
        return numpy.from_dlpack(x, device="cpu", copy=True)


def library_name(xp: Any) -> str:
    """The library of the namespace ``xp``, as users name it: ``numpy``, ``torch``, ``jax``.

    array-api-compat's wrappers (``array_api_compat.torch``) and sub-namespaces
    (``jax.numpy``) are named by their library.
    """
    return xp.__name__.removeprefix("array_api_compat.").split(".")[0]


def library_label(obj: object) -> str:
    """Return a short readable name of an object's type, such as ``numpy.ndarray``."""
    kind = type(obj)
    root = kind.__module__.split(".")[0]
    label = f"{root}.{kind.__qualname__}" if root != "builtins" else kind.__qualname__
    reason = _refusal(kind)
    return label if reason is None else f"{label} ({reason})"


def resolve_creation(like: Any = None, device: Any = None, dtype: Any = None) -> tuple:
    """Return ``(xp, device, dtype)`` for creating parameter or state arrays.

    ``like`` is an array (its library and device are used), an array library
    module or Array API namespace (``numpy``, ``torch``, ``cupy``, ``jax``,
    ``jax.numpy``, ``array_api_strict``), or None for NumPy. ``device`` overrides the device;
    ``dtype`` defaults to float32, given as a dtype of that library or as a
    name such as ``"float64"``.
    """
    if like is None:
        import numpy

        like = numpy
    if is_array(like):
        probe = like
        device = device_of(like) if device is None else device
    else:
        zeros = getattr(like, "zeros", None)
        if zeros is None:
            zeros = getattr(_adapter_namespace(like), "zeros", None)
        if zeros is None:
            raise TypeError(
                "like must be an array or an array library (numpy, torch, cupy, jax, ...), "
                f"got {library_label(like)}"
            )
        probe = zeros(1)
    xp = namespace_of(probe)
    # validation and registry import this module
    from .registry import adapter_for
    from .validation import resolve_dtype

    dtype = resolve_dtype(xp, dtype, default=xp.float32)
    adapter = adapter_for(probe)
    adapter.check_dtype(xp, dtype)
    device = adapter.resolve_device(device)
    empty_on(xp, device, dtype)
    return xp, device, dtype


def resolve_device(xp: Any, device: Any) -> Any:
    """``device`` as the adapter of the namespace ``xp`` resolves it (JAX: ``"cpu"``: a Device).

    A device the adapter or the library refuses is a ValueError naming ``device``.
    """
    from .registry import adapter_for  # registry imports this module

    device = adapter_for(xp.empty((0,))).resolve_device(device)
    empty_on(xp, device)
    return device


# What libraries raise for a device they cannot create arrays on: NumPy ValueError,
# torch RuntimeError (an unknown name), AssertionError (CUDA not compiled in) or
# NotImplementedError (a backend without kernels), array_api_strict ValueError.
_DEVICE_ERRORS = (AssertionError, NotImplementedError, RuntimeError, TypeError, ValueError)


def empty_on(xp: Any, device: Any, dtype: Any = None) -> Any:
    """An empty array of ``xp`` on ``device``: the library's own test of a device name.

    Its refusal becomes normcore's ValueError naming the argument ``device``
    (the library's message is kept), before anything is created.
    """
    try:
        return xp.empty((0,), dtype=dtype, device=device)
    except _DEVICE_ERRORS as error:
        raise ValueError(
            f"device={device!r} is not a device {library_name(xp)} can create arrays on here "
            f"({type(error).__name__}: {error}); pass one of the library's devices, or None "
            "for its default"
        ) from error


def _adapter_namespace(module: Any) -> Any:
    """The namespace that the adapter of the library ``module`` names (``jax`` -> ``jax.numpy``).

    For a library whose top-level module creates no arrays; None when no
    registered adapter overrides :meth:`~normcore.adapter.Adapter.namespace`
    for ``module`` (the default asks this function's caller: no loop).
    """
    from ..adapter import Adapter
    from .registry import adapters

    name = getattr(module, "__name__", None)
    for adapter in adapters():
        if adapter.library == name and type(adapter).namespace is not Adapter.namespace:
            return adapter.namespace()
    return None


def without_grad(x: Any) -> Any:
    """Return ``x`` cut from any autograd graph (torch's ``detach``; other arrays as they are).

    For state that must not remember how it was computed, such as running
    statistics updated from a batch that requires grad.
    """
    detach = getattr(x, "detach", None)
    return x if detach is None else detach()


def requiring_grad_like(new: Any, old: Any) -> Any:
    """Return ``new`` as a leaf that requires grad when ``old`` required it (torch).

    For values that replace a trainable array, such as an optimizer's updated
    parameter computed from detached values; other arrays are returned as they are.
    """
    if getattr(old, "requires_grad", False):
        return new.requires_grad_(True)
    return new

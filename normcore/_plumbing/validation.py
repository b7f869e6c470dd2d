"""Argument checks shared by every public function.

Every check runs before any computation or state change. Messages name the
argument, what was expected and what was given. Wrong types, dtypes or
libraries raise TypeError; wrong shapes, values or devices raise ValueError.
"""

from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Mapping
from typing import Any

from .compat import device_of, is_array, library_label, namespace_of

__all__ = [
    "check_arrays",
    "check_bool",
    "check_choice",
    "check_correction",
    "check_dtype_name",
    "check_eps",
    "check_eps_in",
    "check_feature_count",
    "check_gradient",
    "check_gradient_given",
    "check_int",
    "check_keys",
    "check_known_sizes",
    "check_mapping",
    "check_named_arrays",
    "check_normalized_shape",
    "check_num_groups",
    "check_param_shape",
    "check_positive_int",
    "check_real",
    "check_shapes",
    "compatible_devices",
    "matrix_size",
    "mismatched_keys",
    "normalize_axes",
    "normalize_axis",
    "prefix_hint",
    "resolve_dtype",
]


def check_arrays(
    x: Any,
    /,
    *,
    x_name: str = "x",
    exact_dtype: bool = False,
    others_kind: str | None = None,
    adopt: bool = False,
    **others: Any,
) -> Any:
    """Check ``x`` and the optional arrays in ``others``; return the namespace.

    ``x`` must be a real floating-point array of at least one dimension. Every
    other array that is not None must come from the same library, live on the
    same device and have ``x``'s dtype, except that float16/bfloat16 ``x`` may
    come with float32 parameters (unless ``exact_dtype``). With
    ``others_kind`` (an Array API dtype kind such as ``"bool"``) the others
    must have a dtype of that kind instead. Keyword names, and ``x_name`` for
    ``x``, are used in messages. With ``adopt`` (for callers that then pass
    the others through :func:`normcore._plumbing.dispatch.adopt`), an array
    of another library is accepted where ``x``'s adapter adopts it
    (:meth:`normcore.adapter.Adapter.adopt`) and checked as adopted.
    """
    if not is_array(x):
        raise TypeError(
            f"{x_name} must be an array (numpy.ndarray, torch.Tensor, cupy.ndarray or any "
            f"Array API array), got {library_label(x)}"
        )
    xp = namespace_of(x)
    if not xp.isdtype(x.dtype, "real floating"):
        raise TypeError(
            f"{x_name} must have a real floating-point dtype, got {x.dtype} "
            "(convert it first, e.g. to float32)"
        )
    if getattr(x.dtype, "isnative", True) is False:
        raise TypeError(_byte_swapped(x_name, x.dtype))
    if x.ndim == 0:
        raise ValueError(f"{x_name} must have at least one dimension, got a 0-d array")
    x_device = None
    for name, other in others.items():
        if other is None:
            continue
        if not is_array(other) or namespace_of(other) is not xp:
            adopted = _adopted(xp, x, other) if adopt else None
            if adopted is None:
                raise TypeError(
                    f"{name} must be an array of the same library as {x_name} "
                    f"({library_label(x)}), got {library_label(other)}; normcore never "
                    "converts between libraries"
                )
            other = adopted
        if x_device is None:
            x_device = device_of(x)
        other_device = device_of(other)
        if not compatible_devices(other_device, x_device):
            raise ValueError(
                f"{name} is on device {other_device} but {x_name} is on device {x_device}; "
                "move one of them explicitly (normcore never moves data between devices)"
            )
        if others_kind is not None:
            if not xp.isdtype(other.dtype, others_kind):
                raise TypeError(f"{name} must have dtype {others_kind}, got {other.dtype}")
            continue
        if other.dtype == x.dtype:
            continue
        if getattr(other.dtype, "isnative", True) is False:
            raise TypeError(_byte_swapped(name, other.dtype))
        if exact_dtype:
            raise TypeError(f"{name} must have dtype {x.dtype} like {x_name}, got {other.dtype}")
        if not _is_low_precision_with_float32(xp, x.dtype, other.dtype):
            raise TypeError(
                f"{name} must have dtype {x.dtype} like {x_name} (or float32 when {x_name} is "
                f"float16 or bfloat16), got {other.dtype}"
            )
    return xp


def _byte_swapped(name: str, dtype: Any) -> str:
    """The message for a NumPy dtype in non-native byte order (``>f4`` on a little-endian CPU).

    Refused rather than computed with: NumPy would convert it in every
    operation, results would come back in native order (not ``x``'s dtype),
    and a native parameter would not match it.
    """
    return (
        f"{name} has a byte-swapped dtype {dtype.str!r} (non-native byte order, e.g. read from "
        f"a file of the other endianness); normcore computes in native "
        f"byte order only: convert it first with {name}.astype({name}.dtype.newbyteorder('='))"
    )


def compatible_devices(a: Any, b: Any) -> bool:
    """Whether arrays on devices ``a`` and ``b`` may be combined.

    A device of None is a traced array's (a JAX tracer inside ``jit``,
    ``grad`` or ``vmap`` has no concrete device; array-api-compat reports
    None): it will live wherever the concrete arrays it meets live, so it is
    compatible with every device. Two concrete devices must be equal.
    """
    return a is None or b is None or a == b


def _adopted(xp: Any, x: Any, other: Any) -> Any:
    """``other`` as an array of ``x``'s library when ``x``'s adapter adopts it, else None.

    (:meth:`normcore.adapter.Adapter.adopt`: dask takes NumPy parameters.)
    """
    if not is_array(other):
        return None
    from .registry import adapter_for  # the registry imports the plugin API; only needed here

    return adapter_for(x).adopt(xp, x, other)


def _is_low_precision_with_float32(xp: Any, x_dtype: Any, other_dtype: Any) -> bool:
    return other_dtype == xp.float32 and xp.finfo(x_dtype).bits < 32


def check_known_sizes(x: Any, axes: tuple[int, ...], name: str = "x") -> None:
    """Refuse unknown sizes (None, or dask's NaN) along ``axes``: statistics need counts."""
    sizes = [x.shape[a] for a in axes]
    if all(type(n) is int for n in sizes):
        return
    if any(n is None or (isinstance(n, float) and math.isnan(n)) for n in sizes):
        raise ValueError(
            f"{name} has unknown sizes along the axes {axes} its statistics are taken over "
            f"(shape {tuple(x.shape)}); the number of values must be known: for a dask array "
            "(after boolean indexing, for example) call x.compute_chunk_sizes() first"
        )


def check_eps(eps: Any, name: str = "eps") -> float:
    """Return ``eps`` as a float after checking it is a finite real number > 0."""
    # ``type(...) is float`` first: the ABC check costs a microsecond per call.
    if type(eps) is not float and (isinstance(eps, bool) or not isinstance(eps, numbers.Real)):
        raise TypeError(f"{name} must be a real number, got {library_label(eps)}")
    value = float(eps)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {eps!r}")
    return value


# (namespace name, dtype) -> (smallest normal, largest finite) as Python floats
_EPS_RANGE: dict[tuple[str, Any], tuple[float, float]] = {}


def check_eps_in(eps: float, xp: Any, dtype: Any, name: str = "eps", added: float = 1.0) -> None:
    """Check that ``eps * added`` is a usable value of ``dtype``, the dtype it is added in.

    ``dtype`` is the computation (accumulation) dtype: float32 for float16 and
    bfloat16 data. ``eps`` is refused below the dtype's smallest *normal*
    number (there it is 0 or a subnormal, which fast paths that flush
    subnormals to zero treat as 0, so backends would disagree; a constant row
    would give NaN) and above its largest finite number. ``added`` is the
    factor applied before adding (weight norm adds ``eps / n``).
    """
    key = (getattr(xp, "__name__", ""), dtype)
    try:
        smallest, largest = _EPS_RANGE[key]
    except KeyError:  # finfo once per dtype: this runs on every call
        info = xp.finfo(dtype)
        smallest = float(getattr(info, "smallest_normal", None) or info.tiny)
        largest = float(info.max)
        _EPS_RANGE[key] = (smallest, largest)
    value = eps * added
    if smallest <= value <= largest:
        return
    label = str(dtype).rsplit(".", 1)[-1].removesuffix("'>")
    low = value < smallest
    given = f"{name}={eps!r}" + (f" divided by {1 / added:g}" if added != 1.0 else "")
    bound = (smallest if low else largest) / added
    raise ValueError(
        f"{given} is {'below the smallest normal' if low else 'above the largest'} {label} "
        f"number, and {label} is the dtype it is added in (the statistics are computed in "
        f"{label}); use {name} {'>=' if low else '<='} {bound:.4g}"
    )


def normalize_axis(axis: Any, ndim: int, name: str = "axis") -> int:
    """Return ``axis`` as a non-negative int, checking its type and range."""
    if type(axis) is not int and (isinstance(axis, bool) or not isinstance(axis, numbers.Integral)):
        raise TypeError(f"{name} must be an int, got {library_label(axis)}")
    value = int(axis)
    if not -ndim <= value < ndim:
        raise ValueError(f"{name}={axis} is out of range for an input with {ndim} dimensions")
    return value % ndim


def normalize_axes(axis: Any, ndim: int, name: str = "axis") -> tuple[int, ...]:
    """Return ``axis`` (an int or a tuple of ints) as a tuple of non-negative ints.

    The order given is kept (it is the order of the parameters' dimensions).
    Repeated axes and an empty tuple are rejected.
    """
    if type(axis) is int:
        return (normalize_axis(axis, ndim, name),)
    if isinstance(axis, tuple | list):
        if not axis:
            raise ValueError(f"{name} must name at least one axis, got {axis!r}")
        axes = tuple(normalize_axis(a, ndim, name) for a in axis)
    elif isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        hint = (
            f" ({name}=None, every axis, is not supported: name the axes, e.g. "
            f"{name}=tuple(range(1, x.ndim)) for all but the batch axis)"
            if axis is None
            else ""
        )
        raise TypeError(
            f"{name} must be an int or a tuple of ints, got {library_label(axis)}{hint}"
        )
    else:
        axes = (normalize_axis(axis, ndim, name),)
    if len(set(axes)) != len(axes):
        raise ValueError(f"{name}={axis!r} repeats an axis")
    return axes


def check_feature_count(x: Any, axis: int, count: int, name: str, x_name: str = "x") -> None:
    """Check that ``x`` has ``count`` values along ``axis`` (when ``x`` has an ``axis``).

    For layers built for a number of features or channels (``name`` is the
    constructor argument); inputs with too few dimensions are left to the
    functional API's own check.
    """
    if x.ndim >= 2 and -x.ndim <= axis < x.ndim and x.shape[axis] != count:
        raise ValueError(
            f"{x_name} must have {name}={count} values along axis {axis}, "
            f"got shape {tuple(x.shape)}"
        )


def check_param_shape(param: Any, expected: tuple[int, ...], name: str, what: str) -> None:
    """Check that ``param`` (if given) has shape ``expected``; ``what`` explains it."""
    if param is not None and tuple(param.shape) != expected:
        raise ValueError(
            f"{name} must have shape {expected} ({what}), got shape {tuple(param.shape)}"
        )


def check_gradient_given(dy: Any, name: str = "dy") -> None:
    """A backward needs its output gradient: None (which forwards accept) is a TypeError."""
    if dy is None:
        raise TypeError(
            f"{name} must be an array (the gradient of the loss with respect to the output), "
            "got None"
        )


def check_gradient(dy: Any, x: Any, name: str = "dy", x_name: str = "x") -> None:
    """Check that the output gradient ``dy`` has ``x``'s dtype and shape.

    Its library and device are checked by :func:`check_arrays`.
    """
    if dy is None:
        return
    if dy.dtype != x.dtype:
        raise TypeError(f"{name} must have dtype {x.dtype} like {x_name}, got {dy.dtype}")
    if tuple(dy.shape) != tuple(x.shape):
        raise ValueError(
            f"{name} must have {x_name}'s shape {tuple(x.shape)}, got {tuple(dy.shape)}"
        )


def check_num_groups(num_groups: Any, channels: int) -> int:
    """Return ``num_groups`` as an int after checking it is > 0 and divides ``channels``."""
    if isinstance(num_groups, bool) or not isinstance(num_groups, numbers.Integral):
        raise TypeError(f"num_groups must be an int, got {library_label(num_groups)}")
    groups = int(num_groups)
    if groups <= 0 or channels % groups:
        raise ValueError(
            f"num_groups must be a positive divisor of the number of channels ({channels}), "
            f"got {num_groups}"
        )
    return groups


def check_bool(value: Any, name: str) -> bool:
    """Return ``value`` after checking it is a bool (not merely truthy)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {library_label(value)}")
    return value


def check_choice(value: Any, choices: tuple[str, ...], name: str) -> str:
    """Return ``value`` after checking it is one of the strings in ``choices``."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, one of {choices}, got {library_label(value)}")
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def check_positive_int(value: Any, name: str, minimum: int = 1) -> int:
    """Return ``value`` as an int after checking it is an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {library_label(value)}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_keys(mapping: Any, expected: Any, name: str, what: str = "") -> None:
    """Check that ``mapping`` is a mapping with exactly the keys of ``expected``.

    ``what`` (e.g. ``"for cell='lstm'"``) is added to the message.
    """
    if not isinstance(mapping, Mapping):
        raise TypeError(
            f"{name} must be a mapping of names to arrays, got {library_label(mapping)}"
        )
    missing, extra = mismatched_keys(mapping, expected)
    if missing or extra:
        raise ValueError(
            f"{name}{' ' + what if what else ''} must have exactly the keys {sorted(expected)}: "
            f"missing {missing}, unexpected {extra}{prefix_hint(missing, extra)}"
        )


def mismatched_keys(have: Any, want: Any) -> tuple[list, list]:
    """``(missing, unexpected)`` keys of ``have`` against ``want``, sorted (any key type)."""
    return sorted(set(want) - set(have), key=str), sorted(set(have) - set(want), key=str)


def prefix_hint(missing: list[str], extra: list[str]) -> str:
    """A hint when the unexpected keys are the missing ones behind a prefix (``"0.weight"``).

    That is what a whole model's state dict looks like next to one layer's.
    """
    found: dict[str, int] = {}  # prefix -> how many of the missing keys it holds
    for key in extra:
        for want in missing:
            if isinstance(key, str) and isinstance(want, str) and key.endswith("." + want):
                prefix = key[: -len(want)]
                found[prefix] = found.get(prefix, 0) + 1
    if not found:
        return ""
    example = min(found, key=lambda prefix: (-found[prefix], prefix))
    return (
        f"; the unexpected keys look like a whole model's state dict (prefix {example!r}): "
        f"pass this layer's entries with the prefix removed, e.g. "
        f"{{k.removeprefix({example!r}): v for k, v in state.items() if k.startswith({example!r})}}"
    )


def check_correction(
    correction: Any, count: int | None = None, what: str = "the number of values reduced"
) -> float:
    """Return the degrees-of-freedom ``correction`` as a float after checking it.

    It must be a finite real number >= 0 and, when ``count`` is given, less
    than ``count`` (a variance divides by ``count - correction``); ``what``
    names the count in the message.
    """
    if type(correction) not in (int, float) and (
        isinstance(correction, bool) or not isinstance(correction, numbers.Real)
    ):
        raise TypeError(f"correction must be a real number, got {library_label(correction)}")
    value = float(correction)
    if count is None:
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"correction must be a finite number >= 0, got {correction!r}")
    elif count == 0:
        raise ValueError(f"{what} is 0: a mean and variance need at least one value")
    elif not 0 <= value < count:
        raise ValueError(
            f"correction must be >= 0 and less than {what} ({count}), got {correction!r}"
        )
    return value


def resolve_dtype(xp: Any, dtype: Any, name: str = "dtype", default: Any = None) -> Any:
    """Return ``dtype`` as a real floating dtype of the namespace ``xp``.

    ``dtype`` is a dtype of ``xp`` or its name (``"float64"``); None gives
    ``default`` (returned as it is, so None may stay None).
    """
    if dtype is None:
        return default
    if isinstance(dtype, str):
        found = getattr(xp, dtype, None)
        if found is None:
            found = _numpy_dtype(xp, dtype)
        if found is None:
            raise TypeError(f"{name} {dtype!r} is not a dtype of {xp.__name__}")
        dtype = found
    if not _is_real_floating_dtype(xp, dtype):
        raise TypeError(f"{name} must be a real floating-point dtype, got {dtype}")
    if getattr(dtype, "isnative", True) is False:  # numpy.dtype(">f4") on a little-endian CPU
        raise TypeError(
            f"{name} must be in native byte order, got the byte-swapped {dtype.str!r}; pass "
            f"{dtype.newbyteorder('=')} (its native-order equivalent)"
        )
    return dtype


def _numpy_dtype(xp: Any, name: str) -> Any:
    """NumPy's dtype ``name`` for a namespace whose arrays hold NumPy dtypes but that does not
    name every one (array-api-compat's dask namespace has no ``float16``); else None."""
    numpy = sys.modules.get("numpy")
    if numpy is None or getattr(xp.float32, "__module__", None) != "numpy":
        return None
    try:
        return numpy.dtype(name).type
    except TypeError:
        return None


_FLOATING_NAMES = ("float16", "bfloat16", "float32", "float64")


def check_dtype_name(dtype: Any, name: str = "dtype") -> Any:
    """Refuse, before the library is known, a dtype name that is no real floating dtype.

    Dtype objects are checked later by :func:`resolve_dtype` against the
    namespace of the data; a string can be checked at once.
    """
    if isinstance(dtype, str) and dtype not in _FLOATING_NAMES:
        raise TypeError(
            f"{name} must be a real floating-point dtype or its name, one of {_FLOATING_NAMES}, "
            f"got {dtype!r}"
        )
    return dtype


def check_mapping(value: Any, name: str, what: str = "a mapping of names to arrays") -> None:
    """Refuse a ``value`` that is not a mapping (a string, None, a list of pairs)."""
    if not isinstance(value, Mapping):
        hint = " (make it one with dict(...))" if isinstance(value, list | tuple) else ""
        raise TypeError(f"{name} must be {what}, got {library_label(value)}{hint}")


def _is_real_floating_dtype(xp: Any, dtype: Any) -> bool:
    try:
        return bool(xp.isdtype(dtype, "real floating"))
    except (TypeError, AttributeError, ValueError):  # not a dtype at all, e.g. dtype="sum"
        return False


def check_int(value: Any, name: str) -> int:
    """Return ``value`` as an int after checking it is an integer (not a bool); any sign.

    For arguments such as an axis given before the input's rank is known.
    """
    if type(value) is not int and (
        isinstance(value, bool) or not isinstance(value, numbers.Integral)
    ):
        raise TypeError(f"{name} must be an int, got {library_label(value)}")
    return int(value)


def check_real(
    value: Any, name: str, low: float, high: float, *, allow_none: bool = False
) -> float | None:
    """Return ``value`` as a float after checking it is a real number in ``[low, high]``.

    With ``allow_none``, None is accepted and returned.
    """
    or_none = " or None" if allow_none else ""
    if value is None and allow_none:
        return None
    if type(value) is not float and (
        isinstance(value, bool) or not isinstance(value, numbers.Real)
    ):
        raise TypeError(f"{name} must be a real number{or_none}, got {library_label(value)}")
    if not low <= float(value) <= high:  # False for NaN as well
        raise ValueError(f"{name} must be in [{low:g}, {high:g}]{or_none}, got {value!r}")
    return float(value)


def check_named_arrays(
    arrays: Any,
    names: tuple[str, ...],
    name: str,
    what: str = "",
    *,
    adopt: bool = False,
    **like: Any,
) -> Any:
    """Check that ``arrays`` maps exactly ``names`` to arrays of one library, device and dtype.

    The entries are compared with the one array in ``like`` (keyword: its name
    in messages), or else with the first of ``names``. Messages name an entry
    ``name[key]``; ``what`` is added to the keys' message; ``adopt`` as for
    :func:`check_arrays`. Returns the namespace.
    """
    check_keys(arrays, names, name, what)
    labelled = {f"{name}[{key!r}]": arrays[key] for key in names}
    if not like:
        first = next(iter(labelled))
        like = {first: labelled.pop(first)}
    ((like_name, reference),) = like.items()
    return check_arrays(reference, x_name=like_name, exact_dtype=True, adopt=adopt, **labelled)


def matrix_size(a: Any, label: str, axis: int) -> int:
    """Return ``a.shape[axis]`` after checking that ``a`` (called ``label``) is 2-D."""
    if a.ndim != 2:
        raise ValueError(f"{label} must be a 2-D weight matrix, got shape {tuple(a.shape)}")
    return a.shape[axis]


def check_shapes(arrays: Mapping, expected: Mapping, name: str, what: str) -> None:
    """Check ``arrays[key].shape == expected[key]`` for every key; ``what`` explains them."""
    for key, shape in expected.items():
        got = tuple(arrays[key].shape)
        if got != shape:
            raise ValueError(f"{name}[{key!r}] must have shape {shape} {what}, got {got}")


def check_normalized_shape(normalized_shape: Any) -> tuple[int, ...]:
    """Return ``normalized_shape`` (an int or a sequence of ints) as a tuple of sizes > 0.

    Shared by :class:`normcore.LayerNorm`/:class:`normcore.RMSNorm` and their
    ``normcore.torch`` drop-ins.
    """
    dims = normalized_shape if isinstance(normalized_shape, tuple | list) else (normalized_shape,)
    if not dims or any(isinstance(d, bool) or not isinstance(d, numbers.Integral) for d in dims):
        raise TypeError(
            "normalized_shape must be a positive int or a non-empty tuple of positive ints, "
            f"got {normalized_shape!r}"
        )
    if any(d <= 0 for d in dims):
        raise ValueError(f"normalized_shape must contain sizes > 0, got {normalized_shape!r}")
    return tuple(int(d) for d in dims)

"""Run a primitive on the adapter's fast path when it has one, else on the reference."""

from __future__ import annotations

from typing import Any

from . import _primitive
from ._registry import fast_path

__all__ = ["normalize", "normalize_backward"]


def normalize(xp: Any, adapter: Any, x: Any, gain: Any, bias: Any, **layout: Any):
    """Forward of the normalization primitive; see :func:`normcore._primitive.normalize`."""
    fast = fast_path(adapter, "normalize")
    if fast is not None:
        result = fast(xp, adapter, x, gain, bias, **layout)
        if result is not NotImplemented:
            return result
    return _primitive.normalize(xp, adapter, x, gain, bias, **layout)


def normalize_backward(xp: Any, adapter: Any, dy: Any, x: Any, gain: Any, **layout: Any):
    """Backward of the primitive; see :func:`normcore._primitive.normalize_backward`."""
    fast = fast_path(adapter, "normalize_backward")
    if fast is not None:
        result = fast(xp, adapter, dy, x, gain, **layout)
        if result is not NotImplemented:
            return result
    return _primitive.normalize_backward(xp, adapter, dy, x, gain, **layout)

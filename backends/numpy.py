"""Adapter for NumPy arrays."""

from __future__ import annotations

import sys
from typing import Any

from normcore._adapter import Adapter

__all__ = ["NumPyAdapter", "adapter"]


class NumPyAdapter(Adapter):
    """NumPy: CPU arrays; the reference path runs through ``array_api_compat.numpy``."""

    name = "numpy"
    library = "numpy"

    def owns(self, x: Any) -> bool:
        numpy = sys.modules["numpy"]
        return isinstance(x, numpy.ndarray | numpy.generic)

    def devices(self) -> list[str]:
        return ["cpu"]


adapter = NumPyAdapter()

"""Adapter for CuPy arrays (NVIDIA and AMD GPUs).

The reference path runs on CuPy through ``array_api_compat.cupy``, so results
stay on the array's GPU. This adapter has no fast kernels: they will only be
added together with a run of the test suite on a GPU (none has run yet, so
CuPy support is untested on a real device).
"""

from __future__ import annotations

import sys
from typing import Any

from normcore.adapter import Adapter

__all__ = ["CuPyAdapter", "adapter"]


class CuPyAdapter(Adapter):
    """CuPy: arrays on a GPU, chosen by passing arrays allocated on that device."""

    name = "cupy"
    library = "cupy"
    install_hint = "pip install cupy-cuda12x (or the cupy wheel matching your CUDA/ROCm)"

    def owns(self, x: Any) -> bool:
        return isinstance(x, sys.modules["cupy"].ndarray)

    def library_version(self) -> str | None:
        # CuPy ships as cupy-cudaXYx / cupy-rocm-X-Y wheels; ask the module itself.
        try:
            import cupy
        except Exception:
            return None
        return cupy.__version__

    def devices(self) -> list[str]:
        try:
            import cupy

            count = cupy.cuda.runtime.getDeviceCount()
        except Exception:
            return []
        return [f"cuda:{i}" for i in range(count)]

    def check_devices(self) -> list[Any]:
        import cupy

        return [cupy.cuda.Device(i) for i in range(cupy.cuda.runtime.getDeviceCount())]


adapter = CuPyAdapter()

"""normcore: normalization for neural networks, written once against the Array API.

Layer normalization (Ba, Kiros & Hinton, 2016), RMS normalization, batch
normalization (Ioffe & Szegedy, 2015) with running and population statistics,
and group and instance normalization, implemented once
in a backend-neutral core and run unchanged on NumPy, CuPy and PyTorch arrays
(and any other Array API library). Results come back in the caller's library,
device and dtype.

See ``python -m normcore info`` for the adapters and devices found.
"""

from ._adapter import Adapter
from ._batch import (
    batch_norm,
    batch_norm_backward,
    group_norm,
    group_norm_backward,
    instance_norm,
    instance_norm_backward,
)
from ._batchnorm import BatchNorm
from ._layer import layer_norm, layer_norm_backward, rms_norm, rms_norm_backward
from ._module import Module
from ._moments import Moments, Population, moments, population_stats
from ._primitive import Gradients
from ._registry import reference_path, using_reference_path

__version__ = "0.1.0.dev0"

__all__ = [
    "Adapter",
    "BatchNorm",
    "Gradients",
    "Module",
    "Moments",
    "Population",
    "__version__",
    "batch_norm",
    "batch_norm_backward",
    "group_norm",
    "group_norm_backward",
    "instance_norm",
    "instance_norm_backward",
    "layer_norm",
    "layer_norm_backward",
    "moments",
    "population_stats",
    "reference_path",
    "rms_norm",
    "rms_norm_backward",
    "using_reference_path",
]

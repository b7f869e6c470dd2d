"""normcore: normalization for neural networks, written once against the Array API.

Layer normalization (Ba, Kiros & Hinton, 2016), RMS normalization and the
shared machinery of batch, group and instance normalization, implemented once
in a backend-neutral core and run unchanged on NumPy, CuPy and PyTorch arrays
(and any other Array API library). Results come back in the caller's library,
device and dtype.

See ``python -m normcore info`` for the adapters and devices found.
"""

from . import optim
from ._adapter import Adapter
from ._layer import layer_norm, layer_norm_backward, rms_norm, rms_norm_backward
from ._moments import moments
from ._primitive import Gradients
from ._recurrent import RNNGradients, rnn, rnn_backward
from ._registry import reference_path, using_reference_path
from ._rnn_params import rnn_params, rnn_params_from_torch, rnn_params_to_torch

__version__ = "0.1.0.dev0"

__all__ = [
    "Adapter",
    "Gradients",
    "RNNGradients",
    "__version__",
    "layer_norm",
    "layer_norm_backward",
    "moments",
    "optim",
    "reference_path",
    "rms_norm",
    "rms_norm_backward",
    "rnn",
    "rnn_backward",
    "rnn_params",
    "rnn_params_from_torch",
    "rnn_params_to_torch",
    "using_reference_path",
]

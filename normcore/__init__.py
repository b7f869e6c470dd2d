"""normcore: normalization for neural networks, written once against the Array API.

Layer normalization (Ba, Kiros & Hinton, 2016), RMS normalization, batch
normalization (Ioffe & Szegedy, 2015) with running and population statistics,
and group and instance normalization, implemented once
in a backend-neutral core and run unchanged on NumPy, CuPy and PyTorch arrays
(and any other Array API library). Results come back in the caller's library,
device and dtype.

See ``python -m normcore info`` for the adapters and devices found and
``python -m normcore check`` for a self-test of each. ``normcore.torch`` holds
``torch.nn.Module`` versions of the layers; it is imported on first access, so
``import normcore`` never imports torch.
"""

from typing import Any

from . import adapter, optim, sync, typing
from ._functional.batch_norm import batch_norm, batch_norm_backward, batch_norm_train
from ._functional.group_norm import (
    group_norm,
    group_norm_backward,
    instance_norm,
    instance_norm_backward,
)
from ._functional.layer_norm import layer_norm, layer_norm_backward, rms_norm, rms_norm_backward
from ._functional.moments import Moments, Population, moments, population_stats
from ._functional.rnn import RNNGradients, rnn, rnn_backward
from ._functional.rnn_params import rnn_params, rnn_params_from_torch, rnn_params_to_torch
from ._functional.weight_norm import weight_norm, weight_norm_backward
from ._modules.batch_norm import BatchNorm
from ._modules.group_norm import GroupNorm
from ._modules.layer_norm import LayerNorm, RMSNorm
from ._modules.module import Module
from ._modules.rnn import GRU, LSTM, RNN
from ._plumbing.config import reference_path, using_reference_path
from ._reference.running import RunningStats
from .adapter import Gradients

__version__ = "0.1.0.dev0"

__all__ = [
    "GRU",
    "LSTM",
    "RNN",
    "BatchNorm",
    "Gradients",
    "GroupNorm",
    "LayerNorm",
    "Module",
    "Moments",
    "Population",
    "RMSNorm",
    "RNNGradients",
    "RunningStats",
    "__version__",
    "adapter",
    "batch_norm",
    "batch_norm_backward",
    "batch_norm_train",
    "group_norm",
    "group_norm_backward",
    "instance_norm",
    "instance_norm_backward",
    "layer_norm",
    "layer_norm_backward",
    "moments",
    "optim",
    "population_stats",
    "reference_path",
    "rms_norm",
    "rms_norm_backward",
    "rnn",
    "rnn_backward",
    "rnn_params",
    "rnn_params_from_torch",
    "rnn_params_to_torch",
    "sync",
    "typing",
    "using_reference_path",
    "weight_norm",
    "weight_norm_backward",
]


def __getattr__(name: str) -> Any:
    # ``normcore.torch`` imports torch, so it is loaded on first access only
    # (``import normcore.torch`` and ``from normcore.torch import ...`` work as usual).
    if name == "torch":
        import importlib

        return importlib.import_module("normcore.torch")
    raise AttributeError(f"module 'normcore' has no attribute {name!r}")

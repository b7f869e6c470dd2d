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

import importlib
from typing import TYPE_CHECKING, Any

from . import adapter, sync, typing
from ._functional.batch_norm import batch_norm, batch_norm_backward, batch_norm_train
from ._functional.group_norm import (
    group_norm,
    group_norm_backward,
    instance_norm,
    instance_norm_backward,
)
from ._functional.layer_norm import layer_norm, layer_norm_backward, rms_norm, rms_norm_backward
from ._functional.moments import Moments, Population, moments, population_stats
from ._modules.batch_norm import BatchNorm
from ._modules.group_norm import GroupNorm
from ._modules.layer_norm import LayerNorm, RMSNorm
from ._modules.module import Module
from ._plumbing.config import reference_path, using_reference_path
from ._reference.running import RunningStats
from .adapter import Gradients

# Loaded on first access (PEP 562): the recurrent layers, weight norm and the
# optimizers are a third of the package's import time (about 20 ms), and a
# normalization call needs none of them.
_LAZY = {
    "RNNGradients": "._functional.rnn",
    "rnn": "._functional.rnn",
    "rnn_backward": "._functional.rnn",
    "rnn_params": "._functional.rnn_params",
    "rnn_params_from_torch": "._functional.rnn_params",
    "rnn_params_to_torch": "._functional.rnn_params",
    "RNN": "._modules.rnn",
    "LSTM": "._modules.rnn",
    "GRU": "._modules.rnn",
    "weight_norm": "._functional.weight_norm",
    "weight_norm_backward": "._functional.weight_norm",
}
_LAZY_MODULES = ("optim", "torch")  # normcore.torch imports torch

if TYPE_CHECKING:  # what the names above are, for type checkers and IDEs
    from . import optim
    from ._functional.rnn import RNNGradients, rnn, rnn_backward
    from ._functional.rnn_params import rnn_params, rnn_params_from_torch, rnn_params_to_torch
    from ._functional.weight_norm import weight_norm, weight_norm_backward
    from ._modules.rnn import GRU, LSTM, RNN

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
    # ``import normcore.torch`` and ``from normcore.torch import ...`` work as usual;
    # importing a submodule makes it an attribute of the package.
    if name in _LAZY_MODULES:
        return importlib.import_module(f"normcore.{name}")
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value  # later accesses find it directly
        return value
    raise AttributeError(f"module 'normcore' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | {"torch"})

"""``torch.nn.Module`` drop-ins computed by normcore; importing this package imports torch.

``torch.nn.Module`` subclasses with the constructor arguments, parameters and
``state_dict`` keys of their ``torch.nn`` namesakes (``LayerNorm``, ``RMSNorm``,
``BatchNorm1d/2d/3d``, ``SyncBatchNorm``, ``GroupNorm``, ``InstanceNorm1d/2d/3d``; ``RNN``,
``LSTM``, ``GRU`` with an extra ``layer_norm`` flag), whose ``forward`` calls
normcore's functional API (:func:`normcore.layer_norm`,
:func:`normcore.batch_norm`, :func:`normcore.rnn`, ...). The normalization
modules subclass their ``torch.nn`` namesakes (``isinstance`` checks,
``state_dict`` versioning, ``reset_parameters``, ``extra_repr`` and
``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` are torch's).
Checkpoints load in either direction; gradients come from autograd.
``import normcore`` alone never imports torch: this package is loaded by
``import normcore.torch``, ``from normcore.torch import ...`` or the first
access to ``normcore.torch``.
"""

from __future__ import annotations

import torch

from normcore._plumbing.compat import namespace_of
from normcore._plumbing.registry import adapter_for

from ._batch_norm import BatchNorm1d, BatchNorm2d, BatchNorm3d, SyncBatchNorm
from ._group_norm import GroupNorm
from ._instance_norm import InstanceNorm1d, InstanceNorm2d, InstanceNorm3d
from ._layer_norm import LayerNorm, RMSNorm
from ._rnn import GRU, LSTM, RNN

# Find torch's adapter and namespace now, while Python runs normally:
# torch.compile cannot trace the first adapter lookup (it reads the entry
# points) and warns about array-api-compat's cached type probes; it traces the
# cached lookups cleanly.
for _tensor in (torch.empty(0), torch.nn.Parameter(torch.empty(0))):
    adapter_for(_tensor)
    namespace_of(_tensor)
del _tensor

__all__ = [
    "GRU",
    "LSTM",
    "RNN",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "GroupNorm",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "LayerNorm",
    "RMSNorm",
    "SyncBatchNorm",
]

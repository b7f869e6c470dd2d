"""``flax.nnx`` drop-ins computed by normcore; importing this package imports flax.

Subclasses of ``flax.nnx.LayerNorm``, ``RMSNorm``, ``GroupNorm`` and
``BatchNorm`` with their constructors, parameter and statistics names
(``scale``, ``bias``, ``mean``, ``var``), initializers, dtype promotion and
momentum convention, whose ``__call__`` computes with normcore's functional
API (two-pass statistics: ``use_fast_variance`` is accepted and ignored,
since normcore never computes ``E[x**2] - E[x]**2``). They work with
``nnx.jit``, ``nnx.grad``, ``nnx.split``/``merge`` and optax like the
modules they replace. ``BatchNorm(axis_name=...)`` synchronizes its
statistics over a mapped axis through :class:`normcore.sync.JaxAxis`
(exact for any split, where Flax averages the parts' means and mean squares).
:class:`LayerNormLSTMCell`, which Flax lacks, follows Flax's cell conventions
(``flax.nnx.OptimizedLSTMCell``'s kernels, the ``(c, h)`` carry, ``nnx.RNN``)
and runs normcore's recurrent loop. ``import normcore`` alone never imports flax.
"""

from __future__ import annotations

from ._normalization import BatchNorm, GroupNorm, LayerNorm, RMSNorm
from ._recurrent import LayerNormLSTMCell

__all__ = ["BatchNorm", "GroupNorm", "LayerNorm", "LayerNormLSTMCell", "RMSNorm"]

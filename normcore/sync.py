"""Synchronized batch normalization: reducers that move batch statistics between processes.

In data-parallel training each process holds one part of the global batch.
Batch normalization needs the global batch's statistics: with only its own
part a process normalizes with a small batch's noisy statistics (the failure
at small batches that layer normalization was designed to avoid), and the
processes' running statistics drift apart. Pass a reducer as ``sync=`` to
:class:`normcore.BatchNorm`, :func:`normcore.batch_norm`,
:func:`normcore.batch_norm_backward` or :func:`normcore.batch_norm_train`, or
use ``normcore.torch.SyncBatchNorm``, and every process normalizes with the
exact global statistics.

A reducer only moves buffers; normcore does the math, once for every
library: each process packs its part's ``(count, mean, M2)`` per feature
into one buffer, :meth:`Reducer.all_gather` collects every process's buffer,
and each process merges them with Chan's parallel update (so uneven and empty
parts are exact, and every process gets bit-identical statistics). The
backward adds two per-feature sums over processes with one
:meth:`Reducer.all_sum`. One collective in the forward, one in the backward;
inference (running statistics) communicates nothing.

The built-in reducers: :class:`TorchDistributed` for ``torch.distributed``
process groups (gloo on CPU; NCCL on CUDA, not yet run with normcore),
:class:`MPI` for ``mpi4py`` communicators and NumPy arrays, and
:class:`JaxAxis` for JAX collectives over a named axis (``jax.vmap``,
``jax.pmap`` or ``shard_map`` with an ``axis_name``). Write your own by
subclassing :class:`Reducer` and implementing its two methods.

Layer, RMS, group and instance normalization need none of this: their
statistics are per example, so every process computes them alone (Ba, Kiros &
Hinton, 2016, section 3).
"""

from __future__ import annotations

import abc
from typing import Any

from ._plumbing.compat import library_label

__all__ = ["MPI", "JaxAxis", "Reducer", "TorchDistributed"]


class Reducer(abc.ABC):
    """How the processes of a data-parallel group exchange buffers; it does no math.

    Subclasses implement :meth:`all_gather` and :meth:`all_sum` for 1-D
    arrays of the accumulation dtype (float32 for float16/bfloat16 data).
    Every process of the group must call them in the same order (normcore
    does: every training forward of a synchronized batch norm calls
    ``all_gather`` once, every backward ``all_sum`` once, also for an empty
    local batch).
    """

    @abc.abstractmethod
    def all_gather(self, buffer: Any) -> Any:
        """Return every process's ``buffer`` stacked in rank order: shape ``(world_size, n)``.

        The result must be the same on every process.
        """

    @abc.abstractmethod
    def all_sum(self, buffer: Any) -> Any:
        """Return the elementwise sum of every process's ``buffer`` (a new array)."""

    def __repr__(self) -> str:
        return f"normcore.sync.{type(self).__name__}()"


class TorchDistributed(Reducer):
    """Reducer over a ``torch.distributed`` process group (gloo, NCCL, ...).

    Parameters
    ----------
    group : torch.distributed.ProcessGroup, optional
        The group whose processes share the batch; None is the default
        (world) group. The group must be initialized
        (``torch.distributed.init_process_group``) before the first call.

    Notes
    -----
    Both methods run one ``all_gather_single`` (``all_gather_into_tensor``
    before torch 2.13; ``all_sum`` adds the gathered buffers locally),
    synchronous, on the tensors' device (CPU tensors need a backend that
    supports CPU, such as gloo; CUDA tensors one that supports CUDA, such as
    NCCL). normcore's own autograd
    function, not ``torch.distributed.nn``, carries the gradient. Run here
    with gloo on CPU only: NCCL on CUDA has not been run with normcore yet.

    Examples
    --------
    In each process of a group (see docs/data-parallel.md for a whole script):

    >>> import normcore
    >>> bn = normcore.BatchNorm(16, like=torch, sync=normcore.sync.TorchDistributed())
    ... # doctest: +SKIP
    """

    def __init__(self, group: Any = None) -> None:
        self.group = group

    def all_gather(self, buffer: Any) -> Any:
        import torch.distributed as dist

        world = dist.get_world_size(self.group)
        gathered = buffer.new_empty((world * buffer.numel(),))
        # all_gather_single (torch >= 2.13) is all_gather_into_tensor's new name
        gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        gather(gathered, buffer.contiguous(), group=self.group)
        return gathered.reshape(world, *buffer.shape)

    def all_sum(self, buffer: Any) -> Any:
        # An all-gather and a local sum in rank order, not all_reduce: for the
        # few hundred values batch norm sends, gloo's all_reduce took 2-5x as
        # long as its all_gather here (``normcore bench --sync``), and the sum
        # is the same, bit for bit, on every process.
        return self.all_gather(buffer).sum(dim=0)

    def __repr__(self) -> str:
        group = "" if self.group is None else f"group={self.group!r}"
        return f"normcore.sync.TorchDistributed({group})"


class MPI(Reducer):
    """Reducer over an MPI communicator through ``mpi4py``, for NumPy arrays.

    Parameters
    ----------
    comm : mpi4py.MPI.Comm, optional
        The communicator whose processes share the batch; None is
        ``mpi4py.MPI.COMM_WORLD``.

    Notes
    -----
    ``Allgather`` and ``Allreduce`` on NumPy buffers. Arrays of other
    libraries are refused with a TypeError: CuPy buffers need a CUDA-aware
    MPI, which normcore has not been run with.

    Examples
    --------
    Run with ``mpirun -n 2 python script.py``:

    >>> import normcore
    >>> bn = normcore.BatchNorm(16, sync=normcore.sync.MPI())  # doctest: +SKIP
    """

    def __init__(self, comm: Any = None) -> None:
        if comm is None:
            from mpi4py import MPI as mpi

            comm = mpi.COMM_WORLD
        self.comm = comm

    def _numpy(self, buffer: Any) -> Any:
        import numpy as np

        if type(buffer) is not np.ndarray:
            raise TypeError(
                "normcore.sync.MPI moves NumPy arrays only, got "
                f"{library_label(buffer)}; use normcore.sync.TorchDistributed for torch tensors"
            )
        return np.ascontiguousarray(buffer)

    def all_gather(self, buffer: Any) -> Any:
        import numpy as np

        local = self._numpy(buffer)
        gathered = np.empty((self.comm.Get_size(), *local.shape), dtype=local.dtype)
        self.comm.Allgather(local, gathered)
        return gathered

    def all_sum(self, buffer: Any) -> Any:
        import numpy as np
        from mpi4py import MPI as mpi

        local = self._numpy(buffer)
        total = np.empty_like(local)
        self.comm.Allreduce(local, total, op=mpi.SUM)
        return total

    def __repr__(self) -> str:
        return f"normcore.sync.MPI(comm={self.comm!r})"


class JaxAxis(Reducer):
    """Reducer over a named JAX axis: ``jax.lax.all_gather`` and ``jax.lax.psum``.

    For code mapped with an ``axis_name`` (``jax.vmap``, ``jax.pmap``,
    ``jax.shard_map``); JAX differentiates through both collectives, so
    ``jax.grad`` of a synchronized batch norm is the global batch's gradient.

    Parameters
    ----------
    axis_name : hashable
        The mapped axis whose members share the batch.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> import normcore
    >>> x = jnp.arange(24.0).reshape(2, 4, 3)  # 2 members of 4 rows each
    >>> sync = normcore.sync.JaxAxis("data")
    >>> y = jax.vmap(lambda part: normcore.batch_norm(part, sync=sync), axis_name="data")(x)
    >>> bool(jnp.allclose(y.reshape(8, 3), normcore.batch_norm(x.reshape(8, 3)), atol=1e-6))
    True
    """

    def __init__(self, axis_name: Any) -> None:
        self.axis_name = axis_name

    def all_gather(self, buffer: Any) -> Any:
        import jax

        return jax.lax.all_gather(buffer, self.axis_name)

    def all_sum(self, buffer: Any) -> Any:
        import jax

        return jax.lax.psum(buffer, self.axis_name)

    def __repr__(self) -> str:
        return f"normcore.sync.JaxAxis({self.axis_name!r})"

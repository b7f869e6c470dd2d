"""Synchronized batch norm over MPI with NumPy arrays.

Run: ``mpirun -n 2 python examples/mpi_batch_norm.py``.

Each process holds a part of the batch (here of different sizes); with
``sync=normcore.sync.MPI()`` every process normalizes its part with the
statistics of the whole batch, and all of them end with the same running
statistics. Needs ``pip install "normcore[mpi]"`` (mpi4py and Open MPI's mpirun).
"""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

import normcore

comm = MPI.COMM_WORLD
rank = comm.Get_rank()
rng = np.random.default_rng(rank)
x = rng.normal(5.0, 2.0, size=(8 + 4 * rank, 16)).astype(np.float32)  # uneven parts

bn = normcore.BatchNorm(16, sync=normcore.sync.MPI(comm))
y = bn(x)  # statistics of every process's rows together
dx = bn.backward(np.ones_like(y))  # the whole batch's gradient for this part

means = comm.gather(bn.running_mean, root=0)
if rank == 0:
    same = all(np.array_equal(m, means[0]) for m in means)
    print(f"{comm.Get_size()} processes, running means identical on all: {same}")

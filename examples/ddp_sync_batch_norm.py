"""Data-parallel training on CPU with synchronized batch norm: DDP, gloo, 2 processes.

Run: ``python examples/ddp_sync_batch_norm.py`` (about 10 s on 2 cores). Each
process trains on its half of every batch; ``normcore.torch.SyncBatchNorm``
normalizes both halves with the statistics of the whole batch, so the model
and its running statistics are the same as one process training on whole
batches. ``torch.nn.SyncBatchNorm`` would refuse to run here: it needs a GPU.
"""

from __future__ import annotations

import datetime
import socket
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import normcore.torch as nt

WORLD, BATCH, STEPS = 2, 16, 20


def model() -> torch.nn.Module:
    torch.manual_seed(0)  # the same initial parameters in every process
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.BatchNorm2d(8),  # torch.nn's or normcore.torch's: both are converted
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 1),
    )


def train(rank: int, port: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=60),
    )
    net = nt.SyncBatchNorm.convert_sync_batchnorm(model())
    ddp = torch.nn.parallel.DistributedDataParallel(net)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.05)
    part = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
    for step in range(STEPS):
        data = torch.Generator().manual_seed(step)  # every process draws the whole batch
        x = torch.randn(BATCH, 3, 8, 8, generator=data) * 2 + 1
        target = x.mean(dim=(1, 2, 3)).unsqueeze(1)
        loss = torch.nn.functional.mse_loss(ddp(x[part]), target[part])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    bn = net[1]
    if rank == 0:
        print(f"{type(bn).__name__} after {STEPS} steps on {WORLD} processes:")
        print("  running_mean", [round(v, 4) for v in bn.running_mean.tolist()[:4]], "...")
    # Tear down in order, and together: the DDP wrapper (its reducer holds the
    # process group) goes first, then both processes meet, then the group goes.
    # Destroying the group under a live wrapper, or while the other process still
    # talks to it, made a gloo thread abort its process in CI (SIGABRT, "terminate
    # called without an active exception") after training had finished.
    del ddp, optimizer
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    with socket.socket() as s:  # a free port on the loopback interface
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = mp.start_processes(train, args=(port,), nprocs=WORLD, join=False)
    deadline = time.monotonic() + 120
    while not context.join(timeout=1):  # raises if a process failed
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise TimeoutError("training did not finish in 120 s")


if __name__ == "__main__":
    main()

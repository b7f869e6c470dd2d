"""``python -m normcore bench --sync``: what synchronizing batch norm across processes costs.

Starts a gloo process group of two processes on 127.0.0.1 (``torch.multiprocessing``,
one torch thread each, so that the two share this machine's cores fairly) and
times, in both processes at once and in turns, repeat after repeat, one
training step (forward + backward) of:

* ``torch.nn.BatchNorm2d`` and ``normcore.torch.BatchNorm2d`` on the process's
  own part of the batch (no communication), and
* ``normcore.torch.SyncBatchNorm`` over both processes' parts (one
  ``all_gather`` in the forward, one ``all_reduce`` in the backward, counted).

The ratio of medians SyncBatchNorm / normcore.torch.BatchNorm2d is the cost
of synchronization; the target is <= 1.5 at the larger size.
"""

from __future__ import annotations

import datetime
import os
import socket
import statistics
import sys
import tempfile
import time
from typing import Any

__all__ = ["run"]

# (N, C, H, W) of each process's part; the sizes
SIZES = ((2, 16, 32, 32), (2, 64, 56, 56))
QUICK_SIZES = ((2, 4, 8, 8),)
TARGET = 1.5  # SyncBatchNorm / BatchNorm2d at the larger size


def _step(module, x):
    module(x).sum().backward()


def _worker(rank: int, port: int, sizes, repeats: int, out: str) -> None:
    import torch
    import torch.distributed as dist

    import normcore.torch as nt

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=2,
        timeout=datetime.timedelta(seconds=120),
    )

    from normcore.sync import Reducer

    class Alone(Reducer):
        """The group of this one process: the synchronized computation without transport."""

        def all_gather(self, buffer):
            return buffer[None]

        def all_sum(self, buffer):
            return buffer

    collectives = {"count": 0}  # torch.distributed calls, counted where they are made
    for name in ("all_gather_single", "all_gather_into_tensor", "all_reduce"):
        original = getattr(dist, name, None)
        if original is not None:

            def counted(*args, _original=original, **kwargs):
                collectives["count"] += 1
                return _original(*args, **kwargs)

            setattr(dist, name, counted)

    lines = []
    try:
        for shape in sizes:
            channels = shape[1]
            x = torch.randn(shape, generator=torch.Generator().manual_seed(rank)) * 2 + 1
            x.requires_grad_()
            modules = {
                "torch.nn.BatchNorm2d": torch.nn.BatchNorm2d(channels),
                "normcore BatchNorm2d": nt.BatchNorm2d(channels),
                "normcore SyncBatchNorm": nt.SyncBatchNorm(channels),
                "alone": nt.SyncBatchNorm(channels),
            }
            alone = Alone()
            modules["alone"]._reducer = lambda alone=alone: alone
            before = collectives["count"]
            _step(modules["normcore SyncBatchNorm"], x)
            per_step = collectives["count"] - before
            times: dict[str, list[float]] = {name: [] for name in modules}
            for _ in range(repeats):
                for name, module in modules.items():
                    dist.barrier()  # both processes start each timing together
                    start = time.perf_counter()
                    for _ in range(5):
                        _step(module, x)
                    times[name].append((time.perf_counter() - start) / 5)
            median = {name: statistics.median(t) for name, t in times.items()}
            lines.append((shape, median, per_step))
    finally:
        dist.destroy_process_group()
    if rank == 0:
        with open(os.path.join(out, "result.txt"), "w") as f:
            f.write(repr(lines))


def run(quick: bool = False, out: Any = None) -> list[tuple]:
    """Measure and print the table to ``out`` (stdout); return ``(shape, medians, calls)`` rows."""
    import ast

    import torch.multiprocessing as mp

    out = sys.stdout if out is None else out
    sizes = QUICK_SIZES if quick else SIZES
    repeats = 3 if quick else 15
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as folder:
        context = mp.start_processes(
            _worker,
            args=(port, sizes, repeats, folder),
            nprocs=2,
            join=False,
            start_method="spawn",
        )
        deadline = time.monotonic() + 600
        try:
            while not context.join(timeout=5):
                if time.monotonic() > deadline:
                    raise RuntimeError("normcore bench --sync: the process group hung (600 s)")
        finally:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
        with open(os.path.join(folder, "result.txt")) as f:
            rows = ast.literal_eval(f.read())
    print(
        "normcore bench --sync: world size 2 (gloo on 127.0.0.1, 1 torch thread per process), "
        f"float32, forward + backward per step, medians of {repeats} interleaved repeats "
        "of 5 steps",
        file=out,
    )
    print(
        f"{'per-process input':>18} {'torch.nn BN':>12} {'normcore BN':>12} "
        f"{'SyncBN':>10} {'Sync/normcore':>22} {'Sync/torch.nn':>14} "
        f"{'compute/normcore':>17} {'collectives':>12}",
        file=out,
    )
    for shape, median, calls in rows:
        sync, local, native = (
            median["normcore SyncBatchNorm"],
            median["normcore BatchNorm2d"],
            median["torch.nn.BatchNorm2d"],
        )
        ratio = sync / local
        verdict = ""
        if not quick and shape == SIZES[-1]:
            verdict = f" (<={TARGET}) {'PASS' if ratio <= TARGET else 'MISS'}"
        text = f"{ratio:.2f}{verdict}"
        print(
            f"{'x'.join(map(str, shape)):>18} {native * 1e3:>10.2f}ms {local * 1e3:>10.2f}ms "
            f"{sync * 1e3:>8.2f}ms {text:>22} {sync / native:>14.2f} "
            f"{median['alone'] / local:>17.2f} {calls:>12}",
            file=out,
        )
    print(
        "compute/normcore: SyncBatchNorm over a group of this one process (the same "
        "computation, no transport) / normcore BN; collectives: torch.distributed calls "
        "per training step",
        file=out,
    )
    return rows

"""What each process of the synchronized-batch-norm tests runs (tests/test_sync_batch_norm.py).

A worker joins a gloo process group on 127.0.0.1, computes its part of the
batch with normcore's synchronized batch norm, computes the whole batch in
one process with ``torch.nn.functional.batch_norm`` / ``torch.nn.BatchNorm2d``
(every worker can: the data come from a seed), and writes the largest
differences to ``<out>/<rank>.json`` for the test to assert on.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import json
import os
import sys

import torch
import torch.distributed as dist

import normcore
import normcore.torch as nt

C = 3


def _max(a, b) -> float:
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def _slices(sizes, rank):
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


def _full_batch(sizes, shape, seed, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((sum(sizes), C, *shape), generator=gen, dtype=dtype) * 3 + 5
    w = torch.randn(x.shape, generator=gen, dtype=dtype)  # loss = sum(y * w)
    return x, w


def _global_sum(t):
    t = t.detach().clone()
    dist.all_reduce(t)
    return t


def _identical_everywhere(t) -> bool:
    gathered = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, t.contiguous())
    return all(torch.equal(g, gathered[0]) for g in gathered)


def check_batch_norm(rank, world, sizes, results):
    """SyncBatchNorm, the functional API and normcore.BatchNorm against the whole batch."""
    part = _slices(sizes, rank)
    for momentum in (0.1, None):
        torch_bn = torch.nn.BatchNorm2d(C, momentum=momentum, dtype=torch.float64)
        bn = nt.SyncBatchNorm(C, momentum=momentum, dtype=torch.float64)
        with torch.no_grad():
            for m in (torch_bn, bn):
                m.weight.copy_(torch.tensor([1.5, -0.5, 2.0]))
                m.bias.copy_(torch.tensor([0.1, 0.2, -0.3]))
        for step in range(2):  # the second step starts from updated running statistics
            x, w = _full_batch(sizes, (4, 5), seed=10 * step + 1)
            x.requires_grad_()
            (torch_bn(x) * w).sum().backward()
            mine = x[part].detach().clone().requires_grad_()
            y = bn(mine)
            (y * w[part]).sum().backward()
            key = f"SyncBatchNorm momentum={momentum} step={step}"
            results[key + " dx"] = _max(mine.grad, x.grad[part])
            results[key + " dweight"] = _max(_global_sum(bn.weight.grad), torch_bn.weight.grad)
            results[key + " dbias"] = _max(_global_sum(bn.bias.grad), torch_bn.bias.grad)
            results[key + " running_mean"] = _max(bn.running_mean, torch_bn.running_mean)
            results[key + " running_var"] = _max(bn.running_var, torch_bn.running_var)
            results[key + " tracked"] = float(
                bn.num_batches_tracked != torch_bn.num_batches_tracked
            )
            results[key + " identical on every rank"] = float(
                not all(_identical_everywhere(t) for t in (bn.running_mean, bn.running_var))
            )
            for m in (torch_bn, bn):
                m.weight.grad = m.bias.grad = None
        # y, compared without autograd: the whole batch's output, sliced
        x, _ = _full_batch(sizes, (4, 5), seed=99)
        want = torch.nn.functional.batch_norm(
            x, None, None, bn.weight.detach(), bn.bias.detach(), training=True
        )
        with torch.no_grad():
            before = (bn.running_mean.clone(), bn.running_var.clone())
            got = bn(x[part])
            results[f"SyncBatchNorm momentum={momentum} y"] = _max(got, want[part])
            bn.running_mean.copy_(before[0])
            bn.running_var.copy_(before[1])
    # eval mode communicates nothing: only rank 0 calls it (a collective would hang)
    if rank == 0:
        bn.eval()
        x, _ = _full_batch(sizes, (4, 5), seed=5)
        want = torch.nn.functional.batch_norm(
            x, bn.running_mean, bn.running_var, bn.weight, bn.bias, training=False
        )
        results["eval y"] = _max(bn(x).detach(), want.detach())
    dist.barrier()

    # the functional API under autograd, with a correction, and 2-D input
    sync = normcore.sync.TorchDistributed()
    gain, ref_gain = (
        torch.tensor([1.5, -0.5, 2.0], dtype=torch.float64, requires_grad=True) for _ in "ab"
    )
    x, w = _full_batch(sizes, (), seed=3)
    x.requires_grad_()
    mine = x[part].detach().clone().requires_grad_()
    y = normcore.batch_norm(mine, gain, correction=1, sync=sync)
    (y * w[part]).sum().backward()
    var, mean = torch.var_mean(x, dim=0, correction=1)
    want = (x - mean) / torch.sqrt(var + 1e-5) * ref_gain
    (want * w).sum().backward()
    results["batch_norm(sync) correction=1 y"] = _max(y.detach(), want.detach()[part])
    results["batch_norm(sync) correction=1 dx"] = _max(mine.grad, x.grad[part])
    results["batch_norm(sync) correction=1 dgain"] = _max(_global_sum(gain.grad), ref_gain.grad)

    # normcore.BatchNorm with sync and its explicit backward (torch tensors, float64)
    module = normcore.BatchNorm(C, like=torch, dtype=torch.float64, sync=sync)
    x, w = _full_batch(sizes, (2, 2), seed=4)
    x.requires_grad_()
    y = module(x[part].detach())
    dx = module.backward(w[part])
    ref = torch.nn.BatchNorm2d(C, dtype=torch.float64)
    want = ref(x)
    (want * w).sum().backward()
    results["BatchNorm(sync) y"] = _max(y, want.detach()[part])
    results["BatchNorm(sync) dx"] = _max(dx, x.grad[part])
    results["BatchNorm(sync) dgain"] = _max(_global_sum(module.grads()["gain"]), ref.weight.grad)
    results["BatchNorm(sync) running_var"] = _max(module.running_var, ref.running_var)

    # float16/bfloat16 input, float32 module: statistics accumulate in float32. The
    # reference normalizes the same rounded input in float64, so what remains is the
    # rounding of y (|y| < 4: 2e-3 in float16, 1.6e-2 in bfloat16); statistics summed
    # in the input's dtype would be off by far more at a mean of 100
    for dtype, tolerance in ((torch.float16, 4e-3), (torch.bfloat16, 3e-2)):
        bn_low = nt.SyncBatchNorm(C)
        x, _ = _full_batch(sizes, (8, 8), seed=6)
        x = (x + 95).to(dtype)
        y_low = bn_low(x[part])
        want = torch.nn.functional.batch_norm(x.double(), None, None, training=True)
        results[f"{dtype} y"] = (_max(y_low, want[part]), tolerance)
        results[f"{dtype} dtype"] = float(y_low.dtype != dtype)
        ref = torch.nn.BatchNorm2d(C, dtype=torch.float64)
        ref(x.double())
        results[f"{dtype} running_mean"] = (_max(bn_low.running_mean, ref.running_mean), 1e-5)
        results[f"{dtype} running_var"] = (_max(bn_low.running_var, ref.running_var), 1e-5)


def check_ddp(rank, world, sizes, results):
    """Data-parallel training with converted SyncBatchNorms equals training on the whole batch."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=1),
        torch.nn.BatchNorm2d(6),
        torch.nn.ReLU(),
        torch.nn.Conv2d(6, 4, 3, padding=1),
        nt.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 2),
    ).double()
    single = copy.deepcopy(net)
    synced = nt.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(net))
    ddp = torch.nn.parallel.DistributedDataParallel(synced)
    opt_single = torch.optim.SGD(single.parameters(), lr=0.1, momentum=0.9)
    opt_ddp = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
    part = _slices(sizes, rank)
    for step in range(3):
        gen = torch.Generator().manual_seed(100 + step)
        x = torch.randn((sum(sizes), 3, 6, 6), generator=gen, dtype=torch.float64)
        target = torch.randn((sum(sizes), 2), generator=gen, dtype=torch.float64)
        opt_single.zero_grad()
        torch.nn.functional.mse_loss(single(x), target).backward()
        opt_single.step()
        opt_ddp.zero_grad()
        # DDP averages gradients over processes: with equal parts, each part's mean
        # loss gives the whole batch's mean loss gradient
        torch.nn.functional.mse_loss(ddp(x[part]), target[part]).backward()
        opt_ddp.step()
    worst = max(
        _max(a, b)
        for a, b in zip(single.state_dict().values(), synced.state_dict().values(), strict=True)
    )
    results["DDP parameters and buffers after 3 steps"] = worst


def worker(rank: int, world: int, port: int, sizes: list[int], checks: list[str], out: str):
    """Entry point of one process (``torch.multiprocessing`` spawns it)."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )
    # name -> largest difference (tolerance 1e-12) or (difference, tolerance)
    results: dict[str, float | tuple[float, float]] = {}
    try:
        for name in checks:
            getattr(sys.modules[__name__], name)(rank, world, sizes, results)
    finally:
        with open(os.path.join(out, f"{rank}.json.tmp"), "w") as f:
            json.dump(results, f)
        os.replace(os.path.join(out, f"{rank}.json.tmp"), os.path.join(out, f"{rank}.json"))
        # Leave together: a rank that tears down gloo while the other still talks to it
        # can make the other's gloo thread abort its process (seen once in CI: SIGABRT,
        # "terminate called without an active exception"). Bounded by the group's timeout.
        with contextlib.suppress(Exception):
            dist.barrier()
        dist.destroy_process_group()

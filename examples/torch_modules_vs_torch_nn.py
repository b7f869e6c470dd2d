"""Time normcore.torch's normalization modules against their torch.nn namesakes.

Forward + backward (and forward-only for the small rows) of each pair on the
same float32 CPU input, interleaved in one process; prints the median time of
each and the ratio. Usage::

    python examples/torch_modules_vs_torch_nn.py [threads [only]]   # default: 1, all

``only`` keeps the rows whose name contains it (``LSTM``, ``T=400``, ...).

A shared or loaded machine makes single runs noisy: rerun and compare ratios.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

import normcore.torch

REPEATS, CALLS = 15, 20  # fewer for slow rows: calls until a repeat takes ~50 ms, 7 repeats


def sequence_step(module, x, calls):
    # a recurrent module returns (output, state): the loss is the output's sum
    def run():
        for _ in range(calls):
            module(x.detach().requires_grad_())[0].sum().backward()

    return run


def recurrent(cell, size, hidden, layer_norm=False, **options):
    """normcore.torch's cell (layer-normalized if asked) against torch.nn's plain one."""

    def make(nn):
        extra = {"layer_norm": True} if layer_norm and nn is not torch.nn else {}
        return getattr(nn, cell)(size, hidden, **options, **extra)

    return make


def forward_backward(module, x, calls):
    def run():
        for _ in range(calls):
            module(x.detach().requires_grad_()).sum().backward()

    return run


def forward(module, x, calls):
    def run():
        with torch.no_grad():
            for _ in range(calls):
                module(x)

    return run


CASES = [  # (name, constructor given torch.nn or normcore.torch, input shape, timed, training)
    ("LayerNorm 256x512 f+b", lambda nn: nn.LayerNorm(512), (256, 512), forward_backward, True),
    ("BatchNorm2d 32x32x16x16 train f+b", lambda nn: nn.BatchNorm2d(32), (32, 32, 16, 16),
     forward_backward, True),
    ("BatchNorm2d 32x32x16x16 eval f+b", lambda nn: nn.BatchNorm2d(32), (32, 32, 16, 16),
     forward_backward, False),
    ("GroupNorm(8) 32x32x16x16 f+b", lambda nn: nn.GroupNorm(8, 32), (32, 32, 16, 16),
     forward_backward, True),
    ("InstanceNorm2d(affine) 32x32x16x16 f+b", lambda nn: nn.InstanceNorm2d(32, affine=True),
     (32, 32, 16, 16), forward_backward, True),
    ("InstanceNorm2d(track) 32x32x16x16 train f+b",
     lambda nn: nn.InstanceNorm2d(32, affine=True, track_running_stats=True), (32, 32, 16, 16),
     forward_backward, True),
    ("LayerNorm 64x64 fwd", lambda nn: nn.LayerNorm(64), (64, 64), forward, True),
    ("BatchNorm1d 64x64 train fwd", lambda nn: nn.BatchNorm1d(64), (64, 64), forward, True),
    ("RNN(64,128) T=50 B=32 f+b", recurrent("RNN", 64, 128), (50, 32, 64), sequence_step, True),
    ("LSTM(64,128) T=50 B=32 f+b", recurrent("LSTM", 64, 128), (50, 32, 64), sequence_step,
     True),
    ("GRU(64,128) T=50 B=32 f+b", recurrent("GRU", 64, 128), (50, 32, 64), sequence_step, True),
    ("LSTM(256,256) 2 layers bidir. T=50 B=64 f+b",
     recurrent("LSTM", 256, 256, num_layers=2, bidirectional=True), (50, 64, 256),
     sequence_step, True),
    ("LN-LSTM(256,256) vs LSTM T=50 B=64 f+b", recurrent("LSTM", 256, 256, layer_norm=True),
     (50, 64, 256), sequence_step, True),
    ("LN-GRU(256,256) vs GRU T=50 B=64 f+b", recurrent("GRU", 256, 256, layer_norm=True),
     (50, 64, 256), sequence_step, True),
    ("LN-LSTM(256,256) vs LSTM T=400 B=64 f+b", recurrent("LSTM", 256, 256, layer_norm=True),
     (400, 64, 256), sequence_step, True),
]  # fmt: skip


def main(threads: int, only: str = "") -> None:
    torch.set_num_threads(threads)
    print(f"torch {torch.__version__}, {threads} thread(s); medians of <={REPEATS}x{CALLS} calls")
    for name, make, shape, timed, training in CASES:
        if only not in name:
            continue
        x = torch.randn(shape)
        modules = {nn.__name__: make(nn).train(training) for nn in (torch.nn, normcore.torch)}
        start = time.perf_counter()
        for module in modules.values():
            timed(module, x, 1)()  # warm up
        once = (time.perf_counter() - start) / 2
        calls = max(1, min(CALLS, round(0.05 / once)))
        runs = {key: timed(module, x, calls) for key, module in modules.items()}
        times = {key: [] for key in runs}
        for _ in range(REPEATS if calls == CALLS else 7):
            for key, run in runs.items():
                start = time.perf_counter()
                run()
                times[key].append((time.perf_counter() - start) / calls)
        theirs, ours = (statistics.median(times[k]) for k in ("torch.nn", "normcore.torch"))
        print(
            f"{name:44s} torch.nn {theirs * 1e3:7.3f} ms  normcore.torch {ours * 1e3:7.3f} ms"
            f"  ratio {ours / theirs:5.2f}"
        )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1, sys.argv[2] if len(sys.argv) > 2 else "")

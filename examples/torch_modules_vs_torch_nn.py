"""Time normcore.torch's normalization modules against their torch.nn namesakes.

Forward + backward (and forward-only for the small rows) of each pair on the
same float32 CPU input, interleaved in one process; prints the median time of
each and the ratio. Usage::

    python examples/torch_modules_vs_torch_nn.py [threads]   # default: 1

A shared or loaded machine makes single runs noisy: rerun and compare ratios.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

import normcore.torch

REPEATS, CALLS = 15, 20


def forward_backward(module, x):
    def run():
        for _ in range(CALLS):
            module(x.detach().requires_grad_()).sum().backward()

    return run


def forward(module, x):
    def run():
        with torch.no_grad():
            for _ in range(CALLS):
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
]  # fmt: skip


def main(threads: int) -> None:
    torch.set_num_threads(threads)
    print(f"torch {torch.__version__}, {threads} thread(s); median of {REPEATS} x {CALLS} calls")
    for name, make, shape, timed, training in CASES:
        x = torch.randn(shape)
        runs = {}
        for nn in (torch.nn, normcore.torch):
            runs[nn.__name__] = timed(make(nn).train(training), x)
            runs[nn.__name__]()  # warm up
        times = {key: [] for key in runs}
        for _ in range(REPEATS):
            for key, run in runs.items():
                start = time.perf_counter()
                run()
                times[key].append((time.perf_counter() - start) / CALLS)
        theirs, ours = (statistics.median(times[k]) for k in ("torch.nn", "normcore.torch"))
        print(
            f"{name:44s} torch.nn {theirs * 1e3:7.3f} ms  normcore.torch {ours * 1e3:7.3f} ms"
            f"  ratio {ours / theirs:5.2f}"
        )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1)

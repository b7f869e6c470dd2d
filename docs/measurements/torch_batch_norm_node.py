"""normcore.torch batch norm under autograd: the compiled-kernel node against the native path.

Run it with normcore, numba and torch==2.13.0 installed::

    python docs/measurements/torch_batch_norm_node.py [torch_threads]   # default: 1

Forward + backward of ``torch.nn.BatchNorm*d`` and of two
``normcore.torch`` modules on the same float32 CPU input, in turns within one
process: "before" with the autograd node of ``_recorded_kernels`` switched
off (torch's native ``batch_norm`` on a shifted copy, as before 2026-12-08),
"after" with it. Prints the median time of torch.nn and each module's ratio
to it (medians of 15 repeats of 10 calls). The results are in
docs/performance.md ("normcore.torch batch norm under autograd").
"""

from __future__ import annotations

import statistics
import sys
import time

import torch
from normcore.backends import torch as torch_adapter

import normcore.torch

CASES = [  # (name, constructor given torch.nn or normcore.torch, input shape, training)
    ("BatchNorm2d train 32x32x16x16", lambda nn: nn.BatchNorm2d(32), (32, 32, 16, 16), True),
    ("BatchNorm2d eval 32x32x16x16", lambda nn: nn.BatchNorm2d(32), (32, 32, 16, 16), False),
    ("BatchNorm1d train 256x512", lambda nn: nn.BatchNorm1d(512), (256, 512), True),
    ("BatchNorm2d train 64x64x32x32", lambda nn: nn.BatchNorm2d(64), (64, 64, 32, 32), True),
]
REPEATS, CALLS = 15, 10


def _declined(*args, **kwargs):
    return NotImplemented


def main(threads: int) -> None:
    torch.set_num_threads(threads)
    node = torch_adapter._recorded_kernels
    print(f"torch {torch.__version__}, {threads} thread(s); ratios to torch.nn")
    for name, make, shape, training in CASES:
        x = torch.randn(shape)
        modules = {
            "torch.nn": make(torch.nn).train(training),
            "before": make(normcore.torch).train(training),
            "after": make(normcore.torch).train(training),
        }
        times: dict[str, list[float]] = {key: [] for key in modules}
        for repeat in range(REPEATS + 1):  # the first turn warms up, untimed
            for key, module in modules.items():
                torch_adapter._recorded_kernels = _declined if key == "before" else node
                calls = CALLS if repeat else 1
                start = time.perf_counter()
                for _ in range(calls):
                    module(x.detach().requires_grad_()).sum().backward()
                if repeat:
                    times[key].append((time.perf_counter() - start) / calls)
        torch_adapter._recorded_kernels = node
        median = {key: statistics.median(t) for key, t in times.items()}
        theirs = median["torch.nn"]
        print(
            f"{name:32s} torch.nn {theirs * 1e3:7.3f} ms  before {median['before'] / theirs:5.2f}"
            f"  after {median['after'] / theirs:5.2f}"
        )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1)

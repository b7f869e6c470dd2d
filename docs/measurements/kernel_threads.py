"""Where the NumPy-array kernels gain from threads: one thread against two, by size.

Run it with normcore and numba installed::

    python docs/measurements/kernel_threads.py

For float32 inputs of 2**17 to 2**23 values (rows of 512 for layer norm,
(32, 64, -1) for the batch-norm layout), the median time of each numba kernel
capped at one thread and at two, with the pool's size threshold
(``_numpy_kernels._PARALLEL_MIN``) set to 0 so that both run at every size.
Prints one thread / two threads in ms and their ratio. The results, and the
thresholds chosen from them, are in docs/performance.md ("threads from 2^20
values").
"""

from __future__ import annotations

import statistics
import timeit

import numpy as np
from normcore.backends import _numba_kernels as kernels
from normcore.backends import _numpy_kernels


def _calls(x):
    """The four kernels on ``x`` (float32), as calls without arguments."""
    rows, channels = x.reshape(-1, 512), x.reshape(32, 64, -1)
    g, gc = np.ones(512, np.float32), np.ones(64, np.float32)
    return {
        "rows forward": lambda: kernels.rows_forward(rows, g, g, eps=1e-5, center=True),
        "rows backward": lambda: kernels.rows_backward(
            rows, rows, g, eps=1e-5, center=True, need_dgain=True, need_dbias=True
        ),
        "channels forward": lambda: kernels.channels_forward(channels, gc, gc, eps=1e-5),
        "channels backward": lambda: kernels.channels_backward(
            channels, channels, gc, eps=1e-5, fixed_stats=False, need_dgain=True,
            need_dbias=True,
        ),
    }  # fmt: skip


def main() -> None:
    _numpy_kernels._PARALLEL_MIN = 0
    rng = np.random.default_rng(0)
    for power in range(17, 24):
        n = 1 << power
        number = max(1, 2_000_000 // n)
        cells = []
        for name, call in _calls(rng.standard_normal(n, dtype=np.float32)).items():
            seconds = {}
            for threads in (1, 2):
                with _numpy_kernels.thread_cap(threads):
                    call()
                    repeats = timeit.repeat(call, number=number, repeat=7)
                    seconds[threads] = statistics.median(repeats) / number
            cells.append(
                f"{name} {seconds[1] * 1e3:.3f}/{seconds[2] * 1e3:.3f} "
                f"({seconds[2] / seconds[1]:.2f})"
            )
        print(f"2^{power}: " + "  ".join(cells), flush=True)


if __name__ == "__main__":
    main()

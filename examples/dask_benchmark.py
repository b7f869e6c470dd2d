"""Benchmark: normcore on dask, a dataset larger than a worker's memory and in-memory data.

Two parts, each measured side by side in one process (medians of repeats):

1. A 2-worker ``dask.distributed.LocalCluster`` (processes, loopback only)
   with ``--memory-limit`` per worker, over a lazily generated float32
   dataset of ``--rows x --features`` (at least 4x one worker's limit by
   default). It times ``normcore.population_stats([X])`` against
   ``dask.compute(X.mean(0), X.var(0, ddof=1))`` on the same cluster, and
   ``normcore.layer_norm(X).sum()``, and reports the bytes the workers
   spilled to disk during each.
2. In-memory data with the threaded scheduler: ``normcore.layer_norm`` of a
   dask array (``--chunk-rows`` rows per chunk) against the NumPy fast path
   on the same NumPy array, with the blocks computed alone and dask's own
   copy beside it (what assembling the result into one array costs).
3. A layer-normalized LSTM's forward + backward on a batch of sequences
   chunked along the batch (one task per chunk) against NumPy.

Run::

    python examples/dask_benchmark.py                 # the numbers in docs/performance.md
    python examples/dask_benchmark.py --quick         # a small smoke run

Timings depend on the machine and its load; the script prints what it used.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _spilled_bytes(client) -> float:
    """Bytes written to disk by every worker's spill buffer so far (cumulative)."""

    def written(dask_worker):
        metrics = getattr(dask_worker.data, "cumulative_metrics", {})
        return sum(
            v for (label, unit), v in metrics.items() if label == "disk-write" and unit == "bytes"
        )

    return float(sum(client.run(written).values()))


def cluster_part(args) -> None:
    import dask
    import dask.array as da
    from dask.utils import parse_bytes
    from distributed import Client, LocalCluster

    import normcore

    data_bytes = args.rows * args.features * 4
    print(
        f"dataset: {args.rows} x {args.features} float32 = {data_bytes / 2**30:.2f} GiB, "
        f"chunks of {args.cluster_chunk_rows} rows; 2 workers x {args.memory_limit} "
        f"(dataset / one worker's limit = {data_bytes / parse_bytes(args.memory_limit):.1f})"
    )
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            memory_limit=args.memory_limit,
            dashboard_address=None,
            host="127.0.0.1",
        ) as cluster,
        Client(cluster) as client,
    ):
        client.submit(sum, [1, 2]).result()  # the workers are up before anything is timed
        rng = da.random.default_rng(0)
        X = rng.normal(
            3.0,
            2.0,
            size=(args.rows, args.features),
            chunks=(args.cluster_chunk_rows, args.features),
        ).astype(np.float32)

        def baseline():
            dask.compute(X.mean(0), X.var(0, ddof=1))

        def stats():
            population = normcore.population_stats([X])
            dask.compute(population.mean, population.var)

        def layer_norm_sum():
            normcore.layer_norm(X).sum().compute()

        results = {}
        for name, fn in (
            ("X.mean(0) + X.var(0, ddof=1)", baseline),
            ("population_stats([X])", stats),
            ("layer_norm(X).sum()", layer_norm_sum),
        ):
            before = _spilled_bytes(client)
            seconds = _median_time(fn, args.repeats)
            results[name] = seconds
            spilled = _spilled_bytes(client) - before
            mib = spilled / 2**20
            print(
                f"  {name:30s} {seconds:7.2f} s (median of {args.repeats})  spilled {mib:.1f} MiB"
            )
        ratio = results["population_stats([X])"] / results["X.mean(0) + X.var(0, ddof=1)"]
        print(f"  population_stats / (mean + var): {ratio:.2f}")


def threads_part(args) -> None:
    import dask
    import dask.array as da

    import normcore

    x = (
        np.random.default_rng(0)
        .normal(3.0, 2.0, size=(args.memory_rows, args.features))
        .astype(np.float32)
    )
    dx = da.from_array(x, chunks=(args.chunk_rows, args.features))
    with dask.config.set(scheduler="threads"):
        normcore.layer_norm(dx).compute()  # warm up both
        normcore.layer_norm(x)
        numpy_s = _median_time(lambda: normcore.layer_norm(x), args.repeats)
        dask_s = _median_time(lambda: normcore.layer_norm(dx).compute(), args.repeats)
        # the blocks alone: compute() then copies them into one array, which NumPy never does
        blocks_s = _median_time(
            lambda: dask.compute(*normcore.layer_norm(dx).to_delayed().ravel()), args.repeats
        )
        copy_s = _median_time(lambda: x.copy(), args.repeats)
        dask_copy_s = _median_time(lambda: dx.map_blocks(np.copy).compute(), args.repeats)
        with normcore.reference_path():
            reference_s = _median_time(lambda: normcore.layer_norm(dx).compute(), args.repeats)
    print(
        f"in memory: {args.memory_rows} x {args.features} float32, dask chunks of "
        f"{args.chunk_rows} rows, threaded scheduler ({os.cpu_count()} cores)"
    )
    print(f"  layer_norm NumPy fast path        {numpy_s:7.3f} s")
    for name, seconds in (
        ("fast path", dask_s),
        ("blocks only", blocks_s),
        ("reference path", reference_s),
    ):
        print(f"  layer_norm dask ({name:14s}) {seconds:7.3f} s  ratio {seconds / numpy_s:.2f}")
    print(
        f"  copy: NumPy x.copy() {copy_s:.3f} s, dask x.map_blocks(np.copy).compute() "
        f"{dask_copy_s:.3f} s (the assembly into one array: {dask_copy_s - copy_s:.3f} s)"
    )


def recurrent_part(args) -> None:
    import dask
    import dask.array as da

    import normcore

    steps, batch, size = args.rnn_steps, args.rnn_batch, args.rnn_size
    rng = np.random.default_rng(0)
    params = normcore.rnn_params("lstm", size, size, dtype="float32", seed=0)
    xs = rng.normal(size=(steps, batch, size)).astype(np.float32)
    dhs = rng.normal(size=(steps, batch, size)).astype(np.float32)
    chunks = (steps, args.rnn_chunk, size)
    lazy = {k: da.from_array(v) for k, v in params.items()}

    def numpy_step():
        normcore.rnn(xs, None, params, cell="lstm")
        normcore.rnn_backward(dhs, xs, None, params, cell="lstm")

    def dask_step():
        dxs, ddhs = da.from_array(xs, chunks=chunks), da.from_array(dhs, chunks=chunks)
        hs, _ = normcore.rnn(dxs, None, lazy, cell="lstm")
        grads = normcore.rnn_backward(ddhs, dxs, None, lazy, cell="lstm")
        dask.compute(hs, grads)

    with dask.config.set(scheduler="threads"):
        dask_step()  # warm up both
        numpy_step()
        numpy_s = _median_time(numpy_step, args.repeats)
        dask_s = _median_time(dask_step, args.repeats)
    print(
        f"LN-LSTM forward + backward, T={steps}, B={batch}, I=H={size} float32, dask chunks of "
        f"{args.rnn_chunk} sequences, threaded scheduler"
    )
    print(f"  NumPy {numpy_s:.3f} s, dask {dask_s:.3f} s  ratio {dask_s / numpy_s:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=540_000)
    parser.add_argument("--features", type=int, default=512)
    parser.add_argument("--cluster-chunk-rows", type=int, default=10_000)
    parser.add_argument("--memory-limit", default="256MiB")
    parser.add_argument("--memory-rows", type=int, default=200_000)
    parser.add_argument("--chunk-rows", type=int, default=10_000)
    parser.add_argument("--rnn-steps", type=int, default=50)
    parser.add_argument("--rnn-batch", type=int, default=256)
    parser.add_argument("--rnn-size", type=int, default=128)
    parser.add_argument("--rnn-chunk", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat")
    parser.add_argument("--part", choices=("all", "cluster", "threads", "recurrent"), default="all")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.memory_rows, args.repeats = 40_000, 20_000, 1
        args.cluster_chunk_rows = args.chunk_rows = 5_000
        args.rnn_steps, args.rnn_batch, args.rnn_chunk = 5, 16, 4
    if args.part in ("all", "cluster"):
        cluster_part(args)
    if args.part in ("all", "threads"):
        threads_part(args)
    if args.part in ("all", "recurrent"):
        recurrent_part(args)


if __name__ == "__main__":
    main()

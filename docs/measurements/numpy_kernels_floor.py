"""How close the numba kernels on NumPy arrays come to the memory's floor.

Run it with normcore and numba installed::

    OMP_NUM_THREADS=2 python docs/measurements/numpy_kernels_floor.py [D ...]

It times, in turns (medians of interleaved repeats, as ``normcore bench``
does), for 2**24 float32 values in rows of D:

* ``x.copy()``, the bench's yardstick, and the mere faulting-in of a fresh
  output of the same size (``np.empty`` plus one write per 4 KiB page);
* a compiled copy loop on normcore's thread pool into a fresh output, once
  with ordinary stores and once with non-temporal (streaming) stores, which
  is what glibc's ``memcpy`` uses for large copies;
* a compiled read of every row of x, and of x and dy (what the statistics'
  passes must read from memory before the first value can be written);
* normcore's layer norm (``rows_forward``), into a fresh output as users call
  it, and the same per-row code writing its rows with streaming stores;
* the public calls the bench grades: layer norm's backward (with and
  without gain and bias), RMS norm, batch norm (NCHW, C = D; and its
  statistics pass and normalizing pass apart) and group norm (32 groups,
  NCHW, C = D) forward.

The results and what they show are in docs/performance.md ("Why the NumPy
kernels miss the copy targets"). This is a measurement script, not library
code: the streaming store is an LLVM intrinsic that the kernels do not use.
"""

from __future__ import annotations

import platform
import statistics
import sys
import time

import numpy as np
from llvmlite import ir
from normcore.backends import _numba_kernels as kernels
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

import normcore

ELEMENTS = 2**24
REPEATS = 15
PAGE_VALUES = 4096 // 4


@intrinsic
def _stream4(typingctx, dst, i, src, j):
    """``dst[i:i+4] = src[j:j+4]`` (float32) as one non-temporal 16-byte store.

    ``dst + i`` must be 16-byte aligned; ``src + j`` need only be float32-aligned.
    """
    if dst.dtype != types.float32 or src.dtype != types.float32:
        raise TypeError("_stream4 stores four float32 values: 16 bytes")

    def codegen(context, builder, signature, args):
        d, ii, s, jj = args
        dst_a = context.make_array(signature.args[0])(context, builder, d)
        src_a = context.make_array(signature.args[2])(context, builder, s)
        vector = ir.VectorType(context.get_data_type(signature.args[0].dtype), 4)
        source = builder.bitcast(builder.gep(src_a.data, [jj]), vector.as_pointer())
        value = builder.load(source, align=4)
        store = builder.store(
            value, builder.bitcast(builder.gep(dst_a.data, [ii]), vector.as_pointer()), align=16
        )
        flag = builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)])
        store.set_metadata("nontemporal", flag)
        return context.get_dummy_value()

    return types.void(dst, i, src, j), codegen


@intrinsic
def _fence(typingctx):
    """Streaming stores are weakly ordered, so each task ends with a store fence:
    ``sfence`` on x86-64 (whether LLVM's ``fence seq_cst``, a locked add there,
    orders them is disputed), a full fence elsewhere."""

    def codegen(context, builder, signature, args):
        if platform.machine().lower() in ("x86_64", "amd64"):
            fnty = ir.FunctionType(ir.VoidType(), [])
            builder.call(
                cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.sse.sfence"), []
            )
        else:
            builder.fence("seq_cst")
        return context.get_dummy_value()

    return types.void(), codegen


@njit(inline="always")
def _stream_row(src, dst):
    d = dst.shape[0]
    head = min(d, ((16 - dst.ctypes.data % 16) % 16) // 4)
    for j in range(head):
        dst[j] = src[j]
    j = head
    while j + 4 <= d:
        _stream4(dst, j, src, j)
        j += 4
    for t in range(j, d):
        dst[t] = src[t]


@njit(nogil=True)
def _copy_rows(t0, t1, x, y):
    for r in range(t0, t1):
        y[r][:] = x[r]


@njit(nogil=True)
def _stream_rows(t0, t1, x, y):
    for r in range(t0, t1):
        _stream_row(x[r], y[r])
    _fence()


@njit(nogil=True, fastmath={"reassoc"})
def _read_rows(t0, t1, x, out):
    for r in range(t0, t1):
        row = x[r]
        s = 0.0
        for j in range(row.shape[0]):
            s += row[j]
        out[r] = s


@njit(nogil=True, fastmath={"reassoc"})
def _read_two(t0, t1, x, dy, out):
    for r in range(t0, t1):
        row, drow = x[r], dy[r]
        s = 0.0
        for j in range(row.shape[0]):
            s += row[j] + drow[j]
        out[r] = s


@njit(nogil=True, fastmath={"reassoc"})
def _normalize_streamed(t0, t1, x, g, b, eps, y, mean, rstd):
    scratch = np.empty(x.shape[1], x.dtype)
    for r in range(t0, t1):
        mean[r], rstd[r] = kernels._normalize_row(x[r], g, b, eps, True, scratch)
        _stream_row(scratch, y[r])
    _fence()


def candidates(x, dy):
    """The timed calls on float32 ``x``, ``dy`` (rows, D); D * 64 must divide x.size."""
    if x.dtype != np.float32:
        raise TypeError(f"the streaming stores are written for float32, got {x.dtype}")
    rows, d = x.shape
    g, b = np.ones(d, x.dtype), np.zeros(d, x.dtype)
    nchw = x.reshape(x.size // (d * 64), d, 8, 8)  # C = D channels of 8 x 8
    # Batch norm's two passes apart, as channels_forward runs them on (A, C, B).
    channels = nchw.reshape(nchw.shape[0], d, 64)
    k, _, var = kernels._channel_stats(channels)
    scale = (1.0 / np.sqrt(var + 1e-5)).astype(x.dtype)
    affine = (np.ascontiguousarray(k, x.dtype), scale, np.zeros(d, x.dtype))

    def touch():
        y = np.empty_like(x)
        y.reshape(-1)[::PAGE_VALUES] = 0

    def spread(kernel, *outputs):
        def call():
            fresh = [np.empty(shape, x.dtype) for shape in outputs]
            kernels._spread(kernel, rows, x.size, x, *fresh)
            return fresh

        return call

    def streamed_layer_norm():
        y, mean, rstd = np.empty_like(x), np.empty(rows, x.dtype), np.empty(rows, x.dtype)
        kernels._spread(_normalize_streamed, rows, x.size, x, g, b, 1e-5, y, mean, rstd)
        return y, mean, rstd

    def layer_norm():
        return kernels.rows_forward(x, None, None, eps=1e-5, center=True)

    y_ref, _, rstd_ref = layer_norm()
    y_nt, _, rstd_nt = streamed_layer_norm()
    assert np.array_equal(y_ref, y_nt) and np.array_equal(rstd_ref, rstd_nt)
    assert np.array_equal(spread(_stream_rows, x.shape)()[0], x)
    return {
        "x.copy()": x.copy,
        "fault in a fresh output": touch,
        "copy loop, fresh output": spread(_copy_rows, x.shape),
        "copy loop, streaming stores": spread(_stream_rows, x.shape),
        "read every row of x": spread(_read_rows, (rows,)),
        "read every row of x and dy": lambda: kernels._spread(
            _read_two, rows, x.size, x, dy, np.empty(rows)
        ),
        "layer norm (rows_forward)": layer_norm,
        "layer norm, streaming stores": streamed_layer_norm,
        "layer norm backward": lambda: normcore.layer_norm_backward(dy, x),
        "layer norm backward, gain+bias": lambda: normcore.layer_norm_backward(dy, x, g, b),
        "rms norm": lambda: normcore.rms_norm(x, g),
        "batch norm, NCHW": lambda: normcore.batch_norm(nchw, g, b, axis=1),
        "  its statistics pass": lambda: kernels._channel_stats(channels),
        "  its normalizing pass": lambda: kernels._channel_affine(channels, *affine),
        "group norm, 32 groups, NCHW": lambda: normcore.group_norm(nchw, 32, g, b),
    }


def main(dims):
    for d in dims:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((ELEMENTS // d, d)).astype(np.float32) + 3
        calls = candidates(x, rng.standard_normal(x.shape).astype(np.float32))
        for call in calls.values():
            call()
        samples = {name: [] for name in calls}
        for _ in range(REPEATS):
            for name, call in calls.items():
                t = time.perf_counter()
                call()
                samples[name].append(time.perf_counter() - t)
        copy = statistics.median(samples["x.copy()"])
        print(f"D = {d}, {x.shape[0]} x {d} float32, medians of {REPEATS} interleaved calls")
        for name, values in samples.items():
            median = statistics.median(values)
            print(f"  {name:32s} {median * 1e3:7.2f} ms  {median / copy:5.2f} x copy")


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [256, 1024, 4096])

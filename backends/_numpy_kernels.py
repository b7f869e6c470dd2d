"""Fused, blocked, multi-threaded NumPy kernels for the normalization primitive.

Everything here is plain NumPy.  Speed comes from three things:

* Blocking: work is cut into blocks of about ``_BLOCK`` elements (256 KiB of
  float32) so that every intermediate pass over a block runs out of L2 cache;
  each input element is read from main memory once per phase and each output
  element written once.
* Threads: ufuncs, ``np.vecdot`` and ``np.matmul`` release the GIL, so blocks
  are spread over a small thread pool.  Tasks are handed out dynamically (the
  machines this runs on are shared and noisy), but every reduction that crosses
  tasks is stored per task and combined in a fixed order, so results do not
  depend on scheduling.
* Cheap ufunc calls: per-row operands (``(n, 1)`` broadcasts) make NumPy's
  iterator buffer the operands when the buffer spans several rows, which
  doubles the cost of the pass.  With rows of at least ``_UNBUFFERED_ROW``
  elements the kernels run with a ufunc buffer size of 16 so that each row
  is one unbuffered inner loop.  Per-column operands over short rows (gain
  and bias of short rows, channel vectors in channels-last data) are
  materialised once per call as a block-sized tile, which turns them into
  same-shape operations: NumPy's fastest path.

Numerical contract (see the function docstrings): statistics are two-pass,
centred sums shifted by a sample of the data (the first element of the row
or channel), accumulated in float32 for float16/float32 data and float64 for
float64 data; partial statistics are combined with Chan's parallel merge.
Constant rows/channels therefore give exactly ``xhat == 0``.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np

from normcore._plumbing.config import settings

__all__ = ["channels_backward", "channels_forward", "rows_backward", "rows_forward"]

# Elements per block: with three to five block-sized operands in flight this
# stays inside a 2 MiB L2 cache while keeping ufunc call overhead small.
_BLOCK = 1 << 16
# rows_forward touches only its input and output blocks (it works in place in
# the output), so it affords larger blocks: fewer ufunc calls per element,
# hence fewer GIL hand-offs between threads, which is what limits scaling.
_FWD_BLOCK = 1 << 17
# Longest row segment handled as one piece; longer rows are split and their
# statistics merged (Chan), so that temporaries stay block-sized.
_MAX_ROW = 1 << 16
# Below this many elements a call runs on the calling thread: handing work to
# the pool and waiting for it costs a fixed 110-300 us on the 2-core development
# VM (an empty two-thread spread: 112 us), which threads repay only from about
# 2**20 float32 values per hand-off (docs/performance.md, "Threads from 2**20
# values"; 2**16, the earlier value, made calls of 2**17-2**18 values 1.4-3.8x
# slower than one thread, and most kernels still lost at 2**19).
_PARALLEL_MIN = 1 << 20
# Read once: os.cpu_count() reads /sys on Linux, about 14 us, and every kernel
# call asks (a layer-normalized LSTM step makes several).
_CORES = os.cpu_count() or 1
# Rows at least this long run with minimal ufunc buffering (see module doc);
# shorter rows are better served by NumPy's default buffering.
_UNBUFFERED_ROW = 128
# Gain/bias of rows shorter than this are expanded to block-sized tiles.
_TILE_MAX_ROW = 512
# Channel layouts whose inner extent B is at least this are processed as rows
# of length B; narrower ones as columns of an (A, C*B) matrix.
_ROW_MODE_MIN = 128
# Column tiles keep at least this many rows so column sums amortise, and at
# most this many because BLAS sums each column sequentially (float32 error
# grows with the length); Chan's merge combines the tiles accurately.
_MIN_TILE_ROWS = 16
_MAX_TILE_ROWS = 4096
# Upper bound on per-task partial sums for dgain/dbias in rows_backward.
_MAX_CHUNKS = 64
# Column layouts reduce their row tiles in at most this many fixed groups of
# consecutive tiles, one task per group and column block, each merged as it
# goes: per-channel partial statistics then take ``_MAX_GROUPS * C`` values
# instead of one row per 16-row tile (half the array for C=4096 channels-last).
# The grouping depends on the shape only, so results do not depend on threads.
_MAX_GROUPS = 32

# --------------------------------------------------------------------------
# Threads and scratch memory
# --------------------------------------------------------------------------

_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_workers = 0
_local = threading.local()


def _forget_pool_after_fork() -> None:
    """In a forked child (a DataLoader worker, a multiprocessing.Pool): a new pool.

    Only the forking thread survives a fork, so the parent's pool has no threads
    in the child, and work submitted to it would wait forever; its lock may even
    have been held at the fork.
    """
    global _pool, _pool_lock, _pool_workers
    _pool, _pool_lock, _pool_workers = None, threading.Lock(), 0


os.register_at_fork(after_in_child=_forget_pool_after_fork)


_caps = threading.local()  # this thread's limit (thread_cap), as torch's is per thread


def most_threads():
    """The threads a large call may use: NORMCORE_NUM_THREADS, else OMP_NUM_THREADS
    (at most one per core), else one per core."""
    if settings.num_threads:
        return settings.num_threads
    return min(settings.omp_num_threads or _CORES, _CORES)


def threads_for(nelem):
    """Threads to use for an operation touching ``nelem`` elements."""
    if nelem < _PARALLEL_MIN:
        return 1
    threads = most_threads()
    cap = getattr(_caps, "limit", None)
    return threads if cap is None else max(1, min(threads, cap))


@contextlib.contextmanager
def thread_cap(limit):
    """At most ``limit`` threads for the kernels this thread runs inside the block.

    The torch adapter enters it with ``torch.get_num_threads()`` around the
    calls it hands to these kernels, so ``torch.set_num_threads`` limits them
    as it limits torch's own.
    """
    previous = getattr(_caps, "limit", None)
    _caps.limit = limit if previous is None else min(previous, limit)
    try:
        yield
    finally:
        _caps.limit = previous


def _executor(workers):
    """The shared pool, replaced by a larger one on demand.

    A replaced pool is not shut down: a concurrent call may still be
    submitting to it; its idle threads exit once it is garbage collected.
    """
    global _pool, _pool_workers
    with _pool_lock:
        if _pool is None or _pool_workers < workers:
            _pool = ThreadPoolExecutor(workers, thread_name_prefix="normcore")
            _pool_workers = workers
        return _pool


def spread(ntasks, work, nthreads, context=contextlib.nullcontext):
    """Call ``work(i)`` for every ``i < ntasks`` on ``nthreads`` threads, this one included.

    Tasks are taken from a shared counter (``itertools.count`` is atomic under
    the GIL), so a thread slowed down by other load simply takes fewer tasks.
    Each thread enters ``context()`` once around its tasks.  The pool's idle
    workers wait on a queue (they sleep; nothing spins between calls).  This
    is the one thread pool of both kernel sets (``_numba_kernels`` too).
    """

    def loop(next_task):
        with context():
            while (i := next_task()) < ntasks:
                work(i)

    next_task = itertools.count().__next__
    if nthreads <= 1:
        loop(next_task)
        return
    futures = [_executor(nthreads - 1).submit(loop, next_task) for _ in range(nthreads - 1)]
    try:
        loop(next_task)
    finally:
        wait(futures)
    for f in futures:
        f.result()


@contextlib.contextmanager
def _quiet(unbuffered):
    """Floating-point warnings off (NaN/inf rows propagate silently, as in the
    reference), and minimal ufunc buffering for long rows (see the module doc)."""
    with np.errstate(all="ignore"):
        if unbuffered:
            np.setbufsize(16)  # restored when the errstate context exits
        yield


def _run(ntasks, work, nelem, rowlen):
    """Call ``work(i)`` for every ``i < ntasks``, spread over threads (see :func:`spread`)."""
    nthreads = min(threads_for(nelem), ntasks)
    spread(ntasks, work, nthreads, functools.partial(_quiet, rowlen >= _UNBUFFERED_ROW))


def _scratch(slot, shape, dtype):
    """A per-thread reusable buffer of ``shape``; contents are undefined.

    Reusing the buffers avoids allocation and page faults per block; they are
    bounded by the block size, so what stays cached is small.
    """
    n = math.prod(shape)
    cache = _local.__dict__
    key = (slot, dtype)
    buf = cache.get(key)
    if buf is None or buf.size < n:
        buf = cache[key] = np.empty(max(n, 1), dtype)
    return buf[:n].reshape(shape)


def _acc_dtype(dtype):
    """Accumulation dtype: float32 for float16/float32, float64 for float64."""
    if dtype == np.float16:
        return np.dtype(np.float32)
    if dtype == np.float32 or dtype == np.float64:
        return np.dtype(dtype)
    raise TypeError(f"unsupported dtype {dtype}: expected float16, float32 or float64")


def _vector(v, dtype):
    """gain/bias (or None) as a contiguous vector of ``dtype``."""
    return None if v is None else np.ascontiguousarray(v, dtype=dtype).reshape(-1)


def _load(block, slot, acc):
    """``block`` in the accumulation dtype (a cast copy in scratch if needed)."""
    if block.dtype == acc:
        return block
    out = _scratch(slot, block.shape, acc)
    np.copyto(out, block)
    return out


def _target(block, slot, acc):
    """Where to compute a result destined for ``block`` (itself if dtypes match)."""
    return block if block.dtype == acc else _scratch(slot, block.shape, acc)


def _store(block, result):
    if result is not block:
        np.copyto(block, result)


def _rows_tile(v, rows, nblocks):
    """Per-column vector ``v`` as a ``(rows, len(v))`` tile, or ``v`` itself.

    Same-shape ufunc operands avoid the per-row cost of broadcast loops,
    which matters for short rows; for long rows the broadcast is as fast and
    the tile would only take cache space.  The tile is also extra memory, so
    it is only built when the array spans many blocks.
    """
    if v is None or v.size >= _TILE_MAX_ROW or nblocks < 16:
        return v
    return np.ascontiguousarray(np.broadcast_to(v, (rows, v.size)))


def _part(operand, n):
    """The operand for a block of ``n`` rows: a tile is cut, a vector is kept."""
    return operand[:n] if operand is not None and operand.ndim == 2 else operand


def _inv_std(sq, count, eps, out):
    """``out = 1 / sqrt(sq / count + eps)`` where ``sq`` is a sum of squares."""
    np.divide(sq, count, out=out)
    np.add(out, eps, out=out)
    np.sqrt(out, out=out)
    np.divide(1, out, out=out)
    return out


def _chan_merge(count, m, m2):
    """Merge per-part statistics along axis 0 with Chan's pairwise update.

    ``count`` (T,), ``m`` and ``m2`` (T, C) hold each part's size, mean and
    sum of squared deviations; ``m`` and ``m2`` are overwritten.  Parts are
    merged pairwise in a tree (part i absorbs part i + step), which is both
    accurate and vectorised over the C columns, and works in place so the
    temporaries stay at half a results array.  Returns (count, m, m2) of
    the union, ``m`` and ``m2`` of shape (C,).
    """
    count = np.array(count, np.float64)
    parts = m.shape[0]
    step = 1
    with np.errstate(all="ignore"):  # as in _run: non-finite statistics propagate silently
        while step < parts:
            into, part = slice(0, parts - step, 2 * step), slice(step, parts, 2 * step)
            n_into, n_part = count[into, None], count[part, None]
            _chan_update(m[into], m2[into], n_into, m[part], m2[part], n_part)
            count[into] += count[part]
            step *= 2
    return count[0], m[0], m2[0]


def _chan_update(m, m2, count, part_m, part_m2, part_count):
    """Merge a part's (mean, M2) into the running ``m``/``m2`` in place (Chan).

    ``count`` and ``part_count`` are the element counts behind each side
    (scalars, or columns broadcasting against ``m``).
    """
    total = count + part_count
    delta = np.subtract(part_m, m)
    m2 += part_m2
    sq = np.multiply(delta, delta)
    sq *= count * part_count / total
    m2 += sq
    delta *= part_count / total
    m += delta


# --------------------------------------------------------------------------
# Row (layer / RMS norm) kernels, one block of whole rows at a time
# --------------------------------------------------------------------------


def _center_rows(xa, out, ones):
    """``out = x - mean(x)`` per row; returns (shifted mean m, sum of squares).

    Two-pass and shifted by the row's first element K: ``d = x - K`` (exact
    for data near K), ``m = mean(d)``, ``out = d - m``; the mean is K + m.
    A constant row gives d = m = 0 exactly.
    """
    np.subtract(xa, xa[:, :1], out=out)
    m = np.vecdot(out, ones)
    m /= xa.shape[1]
    np.subtract(out, m[:, None], out=out)
    return m, np.vecdot(out, out)


def _row_stats(xa, out, ones, eps, center, mean_out, rstd_out):
    """Statistics of a block of rows; returns the centred rows (``out``) or ``xa``."""
    if center:
        m, sq = _center_rows(xa, out, ones)
        if mean_out is not None:
            np.add(xa[:, 0], m, out=mean_out)
        src = out
    else:
        sq = np.vecdot(xa, xa)
        src = xa
    _inv_std(sq, xa.shape[1], eps, rstd_out)
    return src


def _rows_forward_block(xb, yb, mean_b, rstd_b, g, b, eps, center, ones):
    """rows_forward on a block of whole rows.

    The output block itself is the working buffer (when dtypes allow), which
    keeps the cache footprint to the input and output blocks.
    """
    acc = rstd_b.dtype
    n = xb.shape[0]
    xa = _load(xb, "x", acc)
    out = _target(yb, "y", acc)
    src = _row_stats(xa, out, ones, eps, center, mean_b, rstd_b)
    np.multiply(src, rstd_b[:, None], out=out)
    if g is not None:
        np.multiply(out, _part(g, n), out=out)
    if b is not None:
        np.add(out, _part(b, n), out=out)
    _store(yb, out)


def _rows_backward_block(
    dyb, xb, dxb, mean_b, rstd_b, g, gvec, ones, ones_rows, eps, center, pg, pb, rstd_out=None
):
    """rows_backward on a block of whole rows; adds its dgain/dbias into pg/pb.

    With ``u = x - mean`` (RMS: ``u = x``), ``xhat = u * rstd``:
    ``dx = rstd * (dy * gain - alpha - u * beta)`` where, per row,
    ``alpha = mean_D(dxhat)`` and ``beta = rstd**2 * mean_D(dxhat * u)``.
    The dx block doubles as scratch: first ``dy * u`` (only needed for
    dgain), then ``dxhat``, then dx.
    """
    acc = ones.dtype
    n, d = xb.shape
    dya = _load(dyb, "dy", acc)
    xa = _load(xb, "x", acc)
    u = _scratch("u", (n, d), acc)
    if rstd_b is None:
        # Statistics not supplied: recompute them exactly as the forward does.
        rstd_b = _scratch("rstd", (n,), acc) if rstd_out is None else rstd_out
        u = _row_stats(xa, u, ones, eps, center, None, rstd_b)
    elif center:
        np.subtract(xa, mean_b[:, None], out=u)
    else:
        u = xa
    out = _target(dxb, "dx", acc)
    w = ones if gvec is None else gvec
    if pg is not None:
        np.multiply(dya, u, out=out)
        pg += np.matmul(rstd_b, out)  # sum over rows of dy * xhat
        beta = np.vecdot(out, w)  # sum_D(dxhat * u)
    if pb is not None:
        pb += np.matmul(ones_rows[:n], dya)
    # dxhat = dy * gain, formed in the dx block.
    if g is None:
        dxhat = dya
    else:
        dxhat = out
        np.multiply(dya, _part(g, n), out=out)
    if pg is None:
        beta = np.vecdot(dxhat, u)  # no dgain wanted: no need for dy * u
    beta *= rstd_b
    beta *= rstd_b
    beta /= d
    # u is scratch when centring; for RMS it is x itself, which must not be written.
    t = u if center else _scratch("u", (n, d), acc)
    np.multiply(u, beta[:, None], out=t)
    if center:
        alpha = np.vecdot(dya, w)
        alpha /= d
        np.add(t, alpha[:, None], out=t)
    np.subtract(dxhat, t, out=out)
    np.multiply(out, rstd_b[:, None], out=out)
    _store(dxb, out)


# --------------------------------------------------------------------------
# Channel layouts: how an (A, C, B) array is cut into 2-D tiles
# --------------------------------------------------------------------------


class _RowLayout:
    """(A, C, B) as rows ``(A*C, B)``: row ``a*C + c`` belongs to channel c.

    Used when B is long (NCHW images, and layer norm with very long rows as
    ``(1, R, D)``).  Rows longer than ``_MAX_ROW`` are cut into segments so
    tiles stay block-sized.  Per-channel vectors become ``(A*C, 1)`` row
    operands; per-tile results are stored per (row, segment).
    """

    def __init__(self, shape):
        self.A, self.C, self.B = shape
        self.rows = self.A * self.C
        self.nseg = max(1, -(-self.B // _MAX_ROW))
        self.seg = -(-self.B // self.nseg)
        self.step = max(1, _BLOCK // self.seg)
        self.nrb = -(-self.rows // self.step)
        self.ntiles = self.nrb * self.nseg
        # Reductions run one task per tile: each result slot is a row, so
        # partial results are already a small fraction of the array.
        self.ntasks = self.ntiles
        self.rowlen = self.seg
        self.ones_len = self.seg

    def view(self, a):
        return a.reshape(self.rows, self.B)

    def tile(self, i):
        """Index of tile ``i`` (row block major) and its slot for per-tile results."""
        rb, s = divmod(i, self.nseg)
        r0, c0 = rb * self.step, s * self.seg
        rows = slice(r0, min(r0 + self.step, self.rows))
        return (rows, slice(c0, min(c0 + self.seg, self.B))), (rows, s)

    def task_tiles(self, t):
        """The tiles reduction task ``t`` covers, with their result slots."""
        return (self.tile(t),)

    def expand(self, v):
        return np.tile(v, self.A)[:, None]

    def operand(self, e, idx):
        return e[idx[0]]

    def count(self, idx):
        return idx[1].stop - idx[1].start

    def sums(self, t, ones):
        """Per-channel sums of a tile: here one value per row."""
        return np.vecdot(t, ones[: t.shape[1]])

    def sumsq(self, t, ones):
        return np.vecdot(t, t)

    def local(self, vals):
        return vals[:, None]

    def results(self):
        return np.empty((self.rows, self.nseg), np.float64)

    def merge(self, msum, m2):
        """Chan-merge per-(row, segment) (mean, M2) into per-channel ones."""
        seglens = np.full(self.nseg, self.seg, np.float64)
        seglens[-1] = self.B - self.seg * (self.nseg - 1)
        count = np.tile(seglens, self.A)

        def parts(r):
            return r.reshape(self.A, self.C, self.nseg).transpose(0, 2, 1).reshape(-1, self.C)

        return _chan_merge(count, parts(msum), parts(m2))

    def total(self, r):
        return r.reshape(self.A, self.C, self.nseg).sum(axis=(0, 2))


class _ColLayout:
    """(A, C, B) as an ``(A, C*B)`` matrix: column j belongs to channel j // B.

    Used when B is short, in particular channels-last data ``(N*H*W, C, 1)``,
    where the reduction runs down the columns.  Tiles are row blocks times
    whole channels.  Per-channel vectors become ``(C*B,)`` column operands,
    materialised as a tile-sized block when every tile spans all columns.
    """

    def __init__(self, shape):
        self.A, self.C, self.B = shape
        self.tc = min(self.C, max(1, _BLOCK // (_MIN_TILE_ROWS * self.B)))
        self.ta = min(self.A, _MAX_TILE_ROWS, max(1, _BLOCK // (self.tc * self.B)))
        self.nra = -(-self.A // self.ta)
        self.ncb = -(-self.C // self.tc)
        self.ntiles = self.nra * self.ncb
        # Reductions: one task per (group of row tiles, column block).
        self.ngroups = min(_MAX_GROUPS, -(-self.nra // 4))
        self.ntasks = self.ngroups * self.ncb
        self.rowlen = self.tc * self.B
        self.ones_len = self.ta

    def view(self, a):
        return a.reshape(self.A, self.C * self.B)

    def tile(self, i):
        ia, jc = divmod(i, self.ncb)
        a0, c0 = ia * self.ta, jc * self.tc
        c1 = min(c0 + self.tc, self.C)
        idx = (slice(a0, min(a0 + self.ta, self.A)), slice(c0 * self.B, c1 * self.B))
        return idx, (ia, slice(c0, c1))

    def _group(self, gi):
        """Row tiles of group ``gi``: a fixed, balanced partition of the nra tiles."""
        return range(gi * self.nra // self.ngroups, (gi + 1) * self.nra // self.ngroups)

    def task_tiles(self, t):
        """The tiles reduction task ``t`` covers, each with its group's result slot."""
        gi, jc = divmod(t, self.ncb)
        for ia in self._group(gi):
            idx, (_, cols) = self.tile(ia * self.ncb + jc)
            yield idx, (gi, cols)

    def expand(self, v):
        col = np.repeat(v, self.B) if self.B > 1 else v
        if self.ncb == 1 and self.nra >= 16:
            return np.ascontiguousarray(np.broadcast_to(col, (self.ta, col.size)))
        return col

    def operand(self, e, idx):
        if e.ndim == 2:
            return e[: idx[0].stop - idx[0].start]
        return e[idx[1]]

    def count(self, idx):
        return (idx[0].stop - idx[0].start) * self.B

    def sums(self, t, ones):
        col = np.matmul(ones[: t.shape[0]], t)
        return col.reshape(-1, self.B).sum(axis=1) if self.B > 1 else col

    def sumsq(self, t, ones):
        np.square(t, out=t)
        return self.sums(t, ones)

    def local(self, vals):
        return np.repeat(vals, self.B) if self.B > 1 else vals

    def results(self):
        return np.empty((self.ngroups, self.C), np.float64)

    def merge(self, msum, m2):
        count = np.empty(self.ngroups, np.float64)
        for gi in range(self.ngroups):
            tiles = self._group(gi)
            rows = min(self.A, tiles.stop * self.ta) - tiles.start * self.ta
            count[gi] = rows * self.B
        return _chan_merge(count, msum, m2)

    def total(self, r):
        return r.sum(axis=0)


def _accumulate(results, slot, values, first):
    """Store (first tile of a task) or add a tile's sums into its result slot."""
    if first:
        results[slot] = values
    else:
        results[slot] += values


def _layout(shape):
    return _RowLayout(shape) if shape[2] >= _ROW_MODE_MIN else _ColLayout(shape)


def _channel_stats(x, lay, acc):
    """Per-channel statistics of ``x`` (A, C, B) over axes A and B.

    Returns (K, m, var): K the per-channel shift (first value of the channel,
    acc dtype), m the mean of ``x - K`` and var the biased variance (both
    float64).  Each tile is centred two-pass on its own mean; the tiles'
    (count, mean, M2) are combined with Chan's merge.
    """
    x2 = lay.view(x)
    k = x[0, :, 0].astype(acc)
    kexp = lay.expand(k)
    ones = np.ones(lay.ones_len, acc)
    msum, m2 = lay.results(), lay.results()

    def work(task):
        seen = 0
        for idx, slot in lay.task_tiles(task):
            xa = _load(x2[idx], "x", acc)
            t = _scratch("t", xa.shape, acc)
            np.subtract(xa, lay.operand(kexp, idx), out=t)
            n = lay.count(idx)
            m = lay.sums(t, ones)
            m /= n
            np.subtract(t, lay.local(m), out=t)
            if seen:
                _chan_update(msum[slot], m2[slot], seen, m, lay.sumsq(t, ones), n)
            else:
                msum[slot] = m
                m2[slot] = lay.sumsq(t, ones)
            seen += n

    _run(lay.ntasks, work, x.size, lay.rowlen)
    count, m, sq = lay.merge(msum, m2)
    return k, m, sq / count


def _row_mean_square(x2, lay, acc):
    """Mean of squares of each row of ``x2`` (rows layout, long rows), float64."""
    sq = lay.results()

    def work(i):
        idx, slot = lay.tile(i)
        xa = _load(x2[idx], "x", acc)
        sq[slot] = np.vecdot(xa, xa)

    _run(lay.ntiles, work, x2.size, lay.rowlen)
    return sq.sum(axis=1) / lay.B


def _affine(x2, y2, lay, acc, k, s, h, g_inner=None, b_inner=None):
    """``y = (x - k) * s + h`` with per-channel k, s, h (acc dtype).

    ``g_inner``/``b_inner`` optionally scale/shift along B afterwards (the
    gain and bias of layer norm over very long rows).
    """
    ke, se, he = lay.expand(k), lay.expand(s), lay.expand(h)

    def work(i):
        idx, _ = lay.tile(i)
        xa = _load(x2[idx], "x", acc)
        yb = y2[idx]
        out = _target(yb, "y", acc)
        np.subtract(xa, lay.operand(ke, idx), out=out)
        np.multiply(out, lay.operand(se, idx), out=out)
        np.add(out, lay.operand(he, idx), out=out)
        if g_inner is not None:
            np.multiply(out, g_inner[idx[1]], out=out)
        if b_inner is not None:
            np.add(out, b_inner[idx[1]], out=out)
        _store(yb, out)

    _run(lay.ntiles, work, x2.size, lay.rowlen)


def _rstd64(var, eps):
    return 1.0 / np.sqrt(np.asarray(var, np.float64) + eps)


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------


def rows_forward(x, gain, bias, *, eps, center):
    """Layer norm (center=True) or RMS norm (center=False) over the rows of ``x``.

    x: C-contiguous 2-D array (R, D) of float16/float32/float64.  gain/bias:
    1-D (D,) or None.  Returns (y, mean, rstd): y (R, D) of x.dtype; mean (R,)
    or None when center=False; rstd (R,).  Statistics are in the
    accumulation dtype (float32 for float16 input).

    Per row, with K its first element: ``d = x - K``, ``m = mean(d)``,
    ``c = d - m``, ``var = mean(c*c)``, ``mean = K + m``,
    ``rstd = 1/sqrt(var + eps)`` and ``y = c * rstd * gain + bias``.  RMS norm:
    ``rstd = 1/sqrt(mean(x*x) + eps)`` and ``y = x * rstd * gain + bias``.
    """
    rows, d = x.shape
    acc = _acc_dtype(x.dtype)
    y = np.empty((rows, d), x.dtype)
    mean = np.empty(rows, acc) if center else None
    rstd = np.empty(rows, acc)
    if x.size == 0:
        # Statistics of empty rows are undefined.
        rstd.fill(np.nan)
        if mean is not None:
            mean.fill(np.nan)
        return y, mean, rstd
    g, b = _vector(gain, acc), _vector(bias, acc)
    if d > _MAX_ROW:
        _long_rows_forward(x, y, mean, rstd, g, b, eps, acc)
        return y, mean, rstd
    step = max(1, _FWD_BLOCK // d)
    nblocks = -(-rows // step)
    gt, bt = _rows_tile(g, step, nblocks), _rows_tile(b, step, nblocks)
    ones = np.ones(d, acc)

    def work(i):
        r = slice(i * step, min(rows, (i + 1) * step))
        mean_b = None if mean is None else mean[r]
        _rows_forward_block(x[r], y[r], mean_b, rstd[r], gt, bt, eps, center, ones)

    _run(nblocks, work, x.size, d)
    return y, mean, rstd


def _long_rows_forward(x, y, mean, rstd, g, b, eps, acc):
    """rows_forward for rows too long for one block: segmented and merged."""
    lay = _RowLayout((1, *x.shape))
    x2 = lay.view(x)
    if mean is not None:
        k, m, var = _channel_stats(x.reshape(lay.A, lay.C, lay.B), lay, acc)
        mean[:] = k + m
        r64 = _rstd64(var, eps)
        h = -m * r64
    else:
        r64 = 1.0 / np.sqrt(_row_mean_square(x2, lay, acc) + eps)
        k = h = np.zeros(lay.rows, acc)
    rstd[:] = r64
    _affine(x2, lay.view(y), lay, acc, k, rstd, h.astype(acc), g, b)


def rows_backward(
    dy, x, gain, *, eps, center, need_dgain, need_dbias, mean=None, rstd=None, rstd_out=None
):
    """Gradients of rows_forward.

    dy, x: C-contiguous (R, D) of the same dtype.  mean/rstd as returned by
    rows_forward, or None to recompute them.  With ``xhat = (x - mean) * rstd``
    (RMS: ``x * rstd``) and ``dxhat = dy * gain`` (or dy):

    * center=True:  ``dx = rstd * (dxhat - mean_D(dxhat) - xhat * mean_D(dxhat * xhat))``
    * center=False: ``dx = rstd * (dxhat - xhat * mean_D(dxhat * xhat))``
    * ``dgain = sum_rows(dy * xhat)``, ``dbias = sum_rows(dy)`` (None unless
      requested), in gain's dtype (x's dtype if gain is None).

    Returns (dx, dgain, dbias); dx has x.dtype.  dgain/dbias are accumulated
    per chunk of rows in the accumulation dtype and summed in a fixed order.
    ``rstd_out`` (R,) in the accumulation dtype, if given, receives the rstd
    used (so a caller can see a variance that overflowed: rstd 0 or NaN).
    """
    rows, d = x.shape
    acc = _acc_dtype(x.dtype)
    pdtype = x.dtype if gain is None else np.dtype(gain.dtype)
    dx = np.empty((rows, d), x.dtype)
    if x.size == 0:
        return (
            dx,
            np.zeros(d, pdtype) if need_dgain else None,
            np.zeros(d, pdtype) if need_dbias else None,
        )
    g = _vector(gain, acc)
    if rstd is not None and (mean is not None or not center):
        mean = _vector(mean, acc) if center else None
        rstd = _vector(rstd, acc)
    else:
        mean = rstd = None
    if d > _MAX_ROW:
        dgain, dbias = _long_rows_backward(
            dy, x, dx, g, eps, center, need_dgain, need_dbias, mean, rstd, acc, rstd_out
        )
    else:
        step = max(1, _BLOCK // d)
        nblocks = -(-rows // step)
        gt = _rows_tile(g, step, nblocks)
        ones, ones_rows = np.ones(d, acc), np.ones(step, acc)
        # dgain/dbias partials: one per chunk of consecutive blocks.  The
        # chunking depends on the shape only, so results are reproducible.
        nchunks = (
            min(nblocks, _MAX_CHUNKS, max(2, rows // 8)) if need_dgain or need_dbias else nblocks
        )
        pg = np.zeros((nchunks, d), acc) if need_dgain else None
        pb = np.zeros((nchunks, d), acc) if need_dbias else None

        def work(c):
            for i in range(c * nblocks // nchunks, (c + 1) * nblocks // nchunks):
                r = slice(i * step, min(rows, (i + 1) * step))
                _rows_backward_block(
                    dy[r],
                    x[r],
                    dx[r],
                    None if mean is None else mean[r],
                    None if rstd is None else rstd[r],
                    gt,
                    g,
                    ones,
                    ones_rows,
                    eps,
                    center,
                    None if pg is None else pg[c],
                    None if pb is None else pb[c],
                    None if rstd_out is None or rstd is not None else rstd_out[r],
                )

        _run(nchunks, work, x.size, d)
        if rstd_out is not None and rstd is not None:
            rstd_out[:] = rstd
        dgain = None if pg is None else pg.sum(axis=0)
        dbias = None if pb is None else pb.sum(axis=0)
    return (
        dx,
        None if dgain is None else dgain.astype(pdtype, copy=False),
        None if dbias is None else dbias.astype(pdtype, copy=False),
    )


def _long_rows_backward(
    dy, x, dx, g, eps, center, need_dgain, need_dbias, mean, rstd, acc, rstd_out
):
    """rows_backward for rows too long for one block.

    Pass 1 runs one task per column segment over all rows, so each task owns
    its slice of dgain/dbias; per-row sums are stored per segment.  Pass 2
    forms dx tile by tile.
    """
    rows, d = x.shape
    lay = _RowLayout((1, rows, d))
    x2, dy2, dx2 = lay.view(x), lay.view(dy), lay.view(dx)
    if rstd is None:
        if center:
            k, m, var = _channel_stats(x.reshape(1, rows, d), lay, acc)
            mean = (k + m).astype(acc)
        else:
            var = _row_mean_square(x2, lay, acc)
        rstd = _rstd64(var, eps).astype(acc)
    if rstd_out is not None:
        rstd_out[:] = rstd
    ones = np.ones(max(lay.seg, lay.step), acc)
    dgain = np.zeros(d, acc) if need_dgain else None
    dbias = np.zeros(d, acc) if need_dbias else None
    s_u, s_dy = lay.results(), lay.results()

    def centred(idx):
        xa = _load(x2[idx], "x", acc)
        if not center:
            return xa
        u = _scratch("u", xa.shape, acc)
        np.subtract(xa, mean[idx[0], None], out=u)
        return u

    def sums(s):
        for rb in range(lay.nrb):
            idx, slot = lay.tile(rb * lay.nseg + s)
            dya = _load(dy2[idx], "dy", acc)
            p = _scratch("p", dya.shape, acc)
            np.multiply(dya, centred(idx), out=p)
            if dgain is not None:
                dgain[idx[1]] += np.matmul(rstd[idx[0]], p)
            if dbias is not None:
                dbias[idx[1]] += np.matmul(ones[: dya.shape[0]], dya)
            w = ones[: dya.shape[1]] if g is None else g[idx[1]]
            s_u[slot] = np.vecdot(p, w)
            s_dy[slot] = np.vecdot(dya, w)

    _run(lay.nseg, sums, x.size, lay.rowlen)
    r64 = np.asarray(rstd, np.float64)
    beta = (r64 * r64 * s_u.sum(axis=1) / d).astype(acc)
    alpha = (s_dy.sum(axis=1) / d).astype(acc)

    def work(i):
        idx, _ = lay.tile(i)
        r = idx[0]
        dya = _load(dy2[idx], "dy", acc)
        p = _scratch("p", dya.shape, acc)
        np.multiply(centred(idx), beta[r, None], out=p)
        if center:
            np.add(p, alpha[r, None], out=p)
        out = _target(dx2[idx], "dx", acc)
        if g is None:
            np.subtract(dya, p, out=out)
        else:
            np.multiply(dya, g[idx[1]], out=out)
            np.subtract(out, p, out=out)
        np.multiply(out, rstd[r, None], out=out)
        _store(dx2[idx], out)

    _run(lay.ntiles, work, x.size, lay.rowlen)
    return dgain, dbias


def channels_forward(x, gain, bias, *, eps, mean=None, var=None):
    """Batch norm over a C-contiguous (A, C, B) array, statistics per channel C.

    NCHW is (N, C, H*W); channels-last NHWC is (N*H*W, C, 1); N x D is
    (N, D, 1).  gain/bias: (C,) or None.  mean/var None: use this batch's
    biased statistics (training); given (C,) arrays: use them (inference).
    Returns (y, mean, var): y of x.dtype shaped like x; mean and var (C,) in
    the accumulation dtype.

    Training statistics are shifted by each channel's first value K and
    merged over tiles with Chan's method.  The output is computed as
    ``y = (x - K) * s + (bias - m * s)`` with ``s = rstd * gain`` and
    ``m = mean - K``: algebraically ``(x - mean) * s + bias``, but without
    rounding ``mean`` first, and exactly ``bias`` for a constant channel.
    """
    c_len = x.shape[1]
    acc = _acc_dtype(x.dtype)
    y = np.empty(x.shape, x.dtype)
    if (mean is None) != (var is None):
        raise ValueError("mean and var must be given together")
    if mean is None:
        if x.size == 0:
            return y, np.full(c_len, np.nan, acc), np.full(c_len, np.nan, acc)
        lay = _layout(x.shape)
        k, m, v = _channel_stats(x, lay, acc)
        mean = (k + m).astype(acc)
        var = v.astype(acc)
    else:
        mean, var = _vector(mean, acc), _vector(var, acc)
        k, m = mean, 0.0
        if x.size == 0:
            return y, mean, var
        lay = _layout(x.shape)
    s = _rstd64(var, eps)
    if gain is not None:
        s = s * _vector(gain, np.float64)
    h = -m * s
    if bias is not None:
        h = h + _vector(bias, np.float64)
    _affine(lay.view(x), lay.view(y), lay, acc, k, s.astype(acc), h.astype(acc))
    return y, mean, var


def channels_backward(
    dy,
    x,
    gain,
    *,
    eps,
    need_dgain,
    need_dbias,
    mean=None,
    var=None,
    fixed_stats=False,
    rstd_out=None,
):
    """Gradients of channels_forward (same layout).

    With ``xhat = (x - mean) * rstd`` and ``dxhat = dy * gain``:
    batch statistics (fixed_stats False) give
    ``dx = rstd * (dxhat - mean_AB(dxhat) - xhat * mean_AB(dxhat * xhat))``;
    fixed (inference) statistics give ``dx = rstd * dxhat``.
    ``dgain = sum_AB(dy * xhat)`` and ``dbias = sum_AB(dy)`` (None unless
    requested) are in gain's dtype (x's dtype if gain is None).  mean/var may
    be the batch statistics saved by the forward; with fixed_stats they are
    required.  Returns (dx, dgain, dbias); ``rstd_out`` (C,), if given,
    receives the rstd used.
    """
    a_len, c_len, b_len = x.shape
    acc = _acc_dtype(x.dtype)
    pdtype = x.dtype if gain is None else np.dtype(gain.dtype)
    dx = np.empty(x.shape, x.dtype)
    if x.size == 0:
        return (
            dx,
            np.zeros(c_len, pdtype) if need_dgain else None,
            np.zeros(c_len, pdtype) if need_dbias else None,
        )
    lay = _layout(x.shape)
    if mean is None or var is None:
        if fixed_stats:
            raise ValueError("fixed_stats requires mean and var")
        # Centre as (x - K) - m, like the forward: rounding K + m to the
        # accumulation dtype first would cost the low bits of x - mean, which
        # dominate dx when a channel's spread is small next to its mean.
        k, m, v = _channel_stats(x, lay, acc)
        shift, offset, var = k.astype(acc), m.astype(acc), v.astype(acc)
    else:
        shift, offset, var = _vector(mean, acc), None, _vector(var, acc)
    rstd = _rstd64(var, eps)
    if rstd_out is not None:
        rstd_out[:] = rstd
    alpha = rstd if gain is None else rstd * _vector(gain, np.float64)
    x2, dy2, dx2 = lay.view(x), lay.view(dy), lay.view(dx)
    shift_e = lay.expand(shift)
    offset_e = None if offset is None else lay.expand(offset)

    def centre(xa, idx, out):
        np.subtract(xa, lay.operand(shift_e, idx), out=out)
        if offset_e is not None:
            np.subtract(out, lay.operand(offset_e, idx), out=out)

    need_su = need_dgain or not fixed_stats
    need_sdy = need_dbias or not fixed_stats
    alpha_e = lay.expand(alpha.astype(acc)) if fixed_stats else None
    ones = np.ones(lay.ones_len, acc)
    s_u = lay.results() if need_su else None
    s_dy = lay.results() if need_sdy else None

    def sums(task):
        # Per-task sums of dy * (x - mean) and of dy; with fixed statistics dx
        # needs no reduction and is formed in the same pass.
        first = True
        for idx, slot in lay.task_tiles(task):
            dya = _load(dy2[idx], "dy", acc)
            if s_u is not None:
                u = _scratch("u", dya.shape, acc)
                centre(_load(x2[idx], "x", acc), idx, u)
                np.multiply(u, dya, out=u)
                _accumulate(s_u, slot, lay.sums(u, ones), first)
            if s_dy is not None:
                _accumulate(s_dy, slot, lay.sums(dya, ones), first)
            if alpha_e is not None:
                out = _target(dx2[idx], "dx", acc)
                np.multiply(dya, lay.operand(alpha_e, idx), out=out)
                _store(dx2[idx], out)
            first = False

    _run(lay.ntasks, sums, x.size, lay.rowlen)
    su = None if s_u is None else lay.total(s_u)
    sdy = None if s_dy is None else lay.total(s_dy)
    if not fixed_stats:
        n = a_len * b_len
        rho_e = lay.expand((rstd * rstd * su / n).astype(acc))
        sigma_e = lay.expand((sdy / n).astype(acc))
        alpha_e = lay.expand(alpha.astype(acc))

        def work(i):
            idx, _ = lay.tile(i)
            xa = _load(x2[idx], "x", acc)
            u = _scratch("u", xa.shape, acc)
            centre(xa, idx, u)
            np.multiply(u, lay.operand(rho_e, idx), out=u)
            np.add(u, lay.operand(sigma_e, idx), out=u)
            out = _target(dx2[idx], "dx", acc)
            np.subtract(_load(dy2[idx], "dy", acc), u, out=out)
            np.multiply(out, lay.operand(alpha_e, idx), out=out)
            _store(dx2[idx], out)

        _run(lay.ntiles, work, x.size, lay.rowlen)
    dgain = None if not need_dgain else (rstd * su).astype(pdtype)
    dbias = None if not need_dbias else sdy.astype(pdtype)
    return dx, dgain, dbias

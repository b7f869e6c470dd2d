"""Compiled (numba) kernels with the interface and contract of ``_numpy_kernels``.

Each function takes and returns what its namesake in
:mod:`normcore.backends._numpy_kernels` does, with the same numerics: two-pass
statistics shifted by the first element of each row/channel (K), centring as
``(x - K) - m``, elementwise arithmetic in the accumulation dtype, so constant
rows/channels give exactly the bias and a NaN row or channel stays isolated.
Sums are accumulated in float64 (at least as accurate as the NumPy kernels'
float32 accumulation for float32 data) and partial statistics are merged with
Chan's update in a fixed order, so results do not depend on thread scheduling.

Rows are processed one at a time inside a ``prange`` loop: the statistics
passes and the output pass run on a row held in cache, so each element is
read once from memory and written once.  Channel statistics run over fixed
(row chunk x channel block) tasks, each cut into cache-sized sub-blocks.
Channels-last arrays (A, C, 1) get kernels of their own over (A, C) views,
whose inner loops run along the contiguous channels (vectorised), since a
loop of length 1 per channel would not.  The per-element formulas
(centring, the affine output, the input gradient) are written once, in
small inlined functions that every kernel calls.

Threads: the kernels are compiled with ``nogil`` and without numba's own
threading layer (no ``parallel``/``prange``).  Each kernel takes a range of
its tasks, and :func:`_spread` hands the ranges to the one thread pool the
NumPy kernels use (``_numpy_kernels.spread``), capped by
NORMCORE_NUM_THREADS (else OMP_NUM_THREADS: ``_numpy_kernels.most_threads``).
That pool's idle workers sleep on a queue.  numba's OpenMP workers instead
spin for a while after each kernel, and on a 2-core machine that took the
cores from OpenBLAS: a NumPy LN-LSTM forward (T=50, B=64, H=256) took 552 ms
with ``prange`` against 60 ms with this pool (the NumPy kernels: 62 ms), and a
1024x1024 float32 matmul called between layer norms 1.60x its time alone
against 1.01x (``docs/performance.md``).

numba 0.68 has no float16 type on the CPU, so float16 input (and empty
input) is handed to the NumPy kernels, which accumulate it in float32.
Importing this module imports numba and raises ImportError without it.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numba import njit

from . import _numpy_kernels

__all__ = [
    "channels_backward",
    "channels_forward",
    "groups_forward",
    "lstm_step",
    "lstm_step_backward",
    "rows_backward",
    "rows_forward",
]

# Elements per cache-resident sub-block of a channel-statistics task.
_SUB_BLOCK = 1 << 15
# Upper bounds on the row chunks of channel tasks and of rows_backward's
# dgain/dbias partials (fixed by the shape, hence reproducible).
_MAX_CHUNKS = 32
_MAX_PARTIAL_VALUES = 1 << 20
# Task ranges handed to each thread of the pool per kernel call (see _spread).
_RANGES_PER_THREAD = 4
# The channel kernels hand work to the pool twice in most calls (statistics, then
# the normalizing pass; sums, then dx): measured, threads repay their hand-offs
# from about twice the elements the row kernels need (2**21 float32 values, not
# 2**20).  The NumPy-only kernels keep the one threshold, 2**20.
_CHANNEL_WORK = 2
# "reassoc" (and no other fast-math flag) lets LLVM vectorise the sum loops,
# which otherwise run one dependent float64 add at a time and take twice as
# long as the memory traffic; NaN, inf and signed zeros keep their IEEE
# meaning.  Orders of summation stay fixed by the compiled code, not by threads.
_JIT = {"nogil": True, "cache": True, "fastmath": {"reassoc"}}


def _delegate(x):
    return x.dtype == np.float16 or x.size == 0


def _spread(kernel, ntasks, nelem, *args):
    """Call ``kernel(t0, t1, *args)`` over task ranges covering ``range(ntasks)``.

    The kernels are compiled without numba's own threads (``nogil`` instead of
    ``parallel``): the ranges run on the NumPy kernels' thread pool, whose idle
    workers sleep on a queue instead of spinning, so they take no time from
    torch's or BLAS's threads between calls (see the module docstring).  Each
    task writes its own outputs or partial sums, combined afterwards in a fixed
    order, so the result does not depend on which thread ran which range.
    """
    nthreads = min(_numpy_kernels.threads_for(nelem), ntasks)
    if nthreads <= 1:
        kernel(0, ntasks, *args)
        return
    # A few ranges per thread: a thread slowed by other load takes fewer of them.
    nranges = min(ntasks, _RANGES_PER_THREAD * nthreads)
    bounds = [i * ntasks // nranges for i in range(nranges + 1)]
    _numpy_kernels.spread(nranges, lambda i: kernel(bounds[i], bounds[i + 1], *args), nthreads)


def _vector(v, n, dtype, fill):
    """gain/bias as a contiguous ``dtype`` vector; None becomes ``fill`` (exact)."""
    if v is None:
        return (
            _constant(n, np.dtype(dtype), fill) if n <= _CONSTANT_MAX else np.full(n, fill, dtype)
        )
    return np.ascontiguousarray(v, dtype=dtype).reshape(-1)


# Only small calls gain from reusing the vector; a large one must not stay cached.
_CONSTANT_MAX = 1 << 14


@functools.lru_cache(maxsize=64)
def _constant(n, dtype, fill):
    """A vector of ``n`` times ``fill``, made once: small calls without gain/bias reuse it.

    Shared between calls, so nothing may write to it; the kernels only read
    their gain and bias. (Marking it read-only would give numba another array
    type, and every kernel another compilation.)
    """
    return np.full(n, fill, dtype)


# The per-element formulas, shared by every kernel and layout below (numba
# inlines them, so the loops still vectorise).


@njit(inline="always")
def _centred(v, shift, offset):
    """``(v - shift) - offset``: v centred by its shift K, then by the mean of v - K."""
    return (v - shift) - offset


@njit(inline="always")
def _affine(v, shift, scale, offset):
    """``(v - shift) * scale + offset``: the whole normalization as one multiply-add."""
    return (v - shift) * scale + offset


@njit(inline="always")
def _input_grad(g, u, beta, alpha, scale):
    """``(g - (u * beta + alpha)) * scale``: dx from the upstream gradient g
    (times the gain), the centred input u and the reduced terms beta, alpha."""
    return (g - (u * beta + alpha)) * scale


# --------------------------------------------------------------------------
# Rows (layer norm / RMS norm)
# --------------------------------------------------------------------------


@njit(inline="always")
def _normalize_row(row, g, b, eps, center, out):
    """``out`` = the row normalized, times ``g`` plus ``b``; returns ``(mean, rstd)``.

    Two passes shifted by the row's first value; ``rstd`` is rounded to the
    row's dtype before use (0 or NaN: the variance overflowed). ``mean`` is 0
    without ``center`` (RMS norm), a zero of the row's dtype.
    """
    d = row.shape[0]
    if center:
        k = row[0]
        s = 0.0
        for j in range(d):
            s += row[j] - k
        m = s / d
        out[0] = m  # rounds m to the row dtype (out is overwritten below)
        mf = out[0]
        sq = 0.0
        for j in range(d):
            c = _centred(row[j], k, mf)
            sq += np.float64(c) * np.float64(c)
        mean = k + m
    else:
        # A zero of the row's dtype (row[0] - row[0] is NaN for an infinite
        # first value, which would spread to the whole row).
        out[0] = 0.0
        k = out[0]
        mf = k
        sq = 0.0
        for j in range(d):
            sq += np.float64(row[j]) * np.float64(row[j])
        mean = 0.0
    out[0] = 1.0 / math.sqrt(sq / d + eps)
    rs = out[0]
    for j in range(d):
        out[j] = _centred(row[j], k, mf) * rs * g[j] + b[j]
    return mean, rs


@njit(**_JIT)
def _rows_forward_kernel(t0, t1, x, g, b, eps, center, y, mean, rstd):
    for r in range(t0, t1):
        mean[r], rstd[r] = _normalize_row(x[r], g, b, eps, center, y[r])


def rows_forward(x, gain, bias, *, eps, center):
    """See :func:`normcore.backends._numpy_kernels.rows_forward`."""
    if _delegate(x):
        return _numpy_kernels.rows_forward(x, gain, bias, eps=eps, center=center)
    rows, d = x.shape
    y = np.empty((rows, d), x.dtype)
    mean = np.empty(rows, x.dtype)
    rstd = np.empty(rows, x.dtype)
    g, b = _vector(gain, d, x.dtype, 1), _vector(bias, d, x.dtype, 0)
    # No np.errstate: compiled code does not consult NumPy's error state.
    args = (x, g, b, float(eps), bool(center), y, mean, rstd)
    _spread(_rows_forward_kernel, rows, x.size, *args)
    return y, (mean if center else None), rstd


@njit(inline="always")
def _row_backward(row, drow, g, eps, center, have_stats, mean, rstd, r, out, pg, pb, need_pg,
                  need_pb):  # fmt: skip
    """``out`` = dx of row ``r``'s normalization; adds its dgain/dbias terms to pg/pb.

    The row's statistics are ``mean[r]``/``rstd[r]`` with ``have_stats``, else
    recomputed (two passes, shifted by the row's first value). Returns the
    rstd used, in the row's dtype (0 or NaN: the variance overflowed).
    """
    d = row.shape[0]
    # shift/offset: x is centred as (x - shift) - offset, in x's dtype.
    if have_stats:
        out[0] = 0.0  # a zero of x's dtype; dx is written below
        shift = mean[r] if center else out[0]
        offset = out[0]
        rs = rstd[r]
    else:
        if center:
            shift = row[0]
            s = 0.0
            for j in range(d):
                s += row[j] - shift
            out[0] = s / d  # rounds to x's dtype; dx is written below
            offset = out[0]
            sq = 0.0
            for j in range(d):
                u = _centred(row[j], shift, offset)
                sq += np.float64(u) * np.float64(u)
        else:
            out[0] = 0.0  # a zero of x's dtype, even for an infinite row[0]
            shift = out[0]
            offset = shift
            sq = 0.0
            for j in range(d):
                sq += np.float64(row[j]) * np.float64(row[j])
        out[0] = 1.0 / math.sqrt(sq / d + eps)
        rs = out[0]
    # Every loop below is branch-free, so that it vectorises: the optional
    # dgain/dbias sums, under an `if` inside dx's loop, kept that loop scalar
    # and doubled the time of a backward without them.  They take loops of
    # their own (fused into the loop of su/sdy they were 5% faster, but changed
    # the summation order of su in float64, hence dx in its last bits).
    su = 0.0
    sdy = 0.0
    for j in range(d):
        w = drow[j] * g[j]
        su += np.float64(w) * np.float64(_centred(row[j], shift, offset))
        sdy += w
    if need_pg:
        for j in range(d):
            pg[j] += np.float64(drow[j]) * np.float64(_centred(row[j], shift, offset) * rs)
    if need_pb:
        for j in range(d):
            pb[j] += drow[j]
    out[0] = np.float64(rs) * np.float64(rs) * su / d
    beta = out[0]
    out[0] = sdy / d if center else 0.0
    alpha = out[0]
    for j in range(d):
        out[j] = _input_grad(drow[j] * g[j], _centred(row[j], shift, offset), beta, alpha, rs)
    return rs


@njit(**_JIT)
def _rows_backward_kernel(
    t0, t1, dy, x, g, eps, center, have_stats, mean, rstd, dx, nchunks, pg, pb, need_pg, need_pb,
    rstd_out,
):  # fmt: skip
    rows = x.shape[0]
    for c in range(t0, t1):
        for r in range(c * rows // nchunks, (c + 1) * rows // nchunks):
            # pg/pb are (1, 1) placeholders when not needed
            rs = _row_backward(x[r], dy[r], g, eps, center, have_stats, mean, rstd, r, dx[r],
                               pg[c if need_pg else 0], pb[c if need_pb else 0], need_pg,
                               need_pb)  # fmt: skip
            if rstd_out.shape[0]:
                rstd_out[r] = rs


def rows_backward(
    dy, x, gain, *, eps, center, need_dgain, need_dbias, mean=None, rstd=None, rstd_out=None
):
    """See :func:`normcore.backends._numpy_kernels.rows_backward`."""
    if _delegate(x):
        return _numpy_kernels.rows_backward(
            dy, x, gain, eps=eps, center=center, need_dgain=need_dgain,
            need_dbias=need_dbias, mean=mean, rstd=rstd, rstd_out=rstd_out,
        )  # fmt: skip
    rows, d = x.shape
    pdtype = x.dtype if gain is None else np.dtype(gain.dtype)
    have_stats = rstd is not None and (mean is not None or not center)
    empty = np.empty(0, x.dtype)
    mean = _vector(mean, 0, x.dtype, 0) if have_stats and center else empty
    rstd = _vector(rstd, 0, x.dtype, 0) if have_stats else empty
    g = _vector(gain, d, x.dtype, 1)
    nchunks = max(1, min(rows, _MAX_CHUNKS, _MAX_PARTIAL_VALUES // d))
    partials = (nchunks, d)
    pg = np.zeros(partials if need_dgain else (1, 1))
    pb = np.zeros(partials if need_dbias else (1, 1))
    dx = np.empty((rows, d), x.dtype)
    _spread(
        _rows_backward_kernel, nchunks, x.size,
        dy, x, g, float(eps), bool(center), have_stats, mean, rstd, dx, nchunks,
        pg, pb, bool(need_dgain), bool(need_dbias),
        empty if rstd_out is None else rstd_out,
    )  # fmt: skip
    dgain = pg.sum(axis=0).astype(pdtype) if need_dgain else None
    dbias = pb.sum(axis=0).astype(pdtype) if need_dbias else None
    return dx, dgain, dbias


@njit(**_JIT)
def _groups_forward_kernel(t0, t1, x, g, b, groups, eps, y, rstd):
    for r in range(t0, t1):
        rstd[r] = _normalize_row(x[r], g[r % groups], b[r % groups], eps, True, y[r])[1]


def _per_row(v, fill, groups, length, spatial, dtype):
    """gain/bias (G, C/G) or None expanded to one value per element of a group's row:
    (G, C/G * S), each channel's value repeated over its S spatial values."""
    if v is None:
        return np.full((groups, length), fill, dtype)
    return np.repeat(np.asarray(v, dtype).reshape(groups, length // spatial), spatial, axis=1)


def groups_forward(x, gain, bias, *, eps, groups, spatial):
    """Group norm's forward: rows of ``x`` (N * G, C/G * S) normalized one at a time.

    ``gain``/``bias`` (G, C/G) or None, ``spatial`` = S, the values per
    channel. Each row is one (example, group); its parameters, expanded to
    the row's length once per call (C * S values), go through the per-row
    code of :func:`rows_forward`. Returns ``(y, rstd)``; an rstd of 0 or NaN
    says a variance overflowed (the caller then runs the reference).
    """
    rows, length = x.shape
    y = np.empty((rows, length), x.dtype)
    rstd = np.empty(rows, x.dtype)
    g = _per_row(gain, 1, groups, length, spatial, x.dtype)
    b = _per_row(bias, 0, groups, length, spatial, x.dtype)
    _spread(_groups_forward_kernel, rows, x.size, x, g, b, groups, float(eps), y, rstd)
    return y, rstd


@njit(**_JIT)
def _groups_backward_kernel(t0, t1, dy, x, g, groups, eps, dx, nchunks, pg, pb, need_pg, need_pb,
                            rstd):  # fmt: skip
    rows = x.shape[0]
    none = rstd[:0]  # the statistics are recomputed: no saved mean/rstd
    for c in range(t0, t1):
        for r in range(c * rows // nchunks, (c + 1) * rows // nchunks):
            k = r % groups
            # pg/pb are (1, 1, 1) placeholders when not needed
            rstd[r] = _row_backward(x[r], dy[r], g[k], eps, True, False, none, none, r, dx[r],
                                    pg[c if need_pg else 0, k if need_pg else 0],
                                    pb[c if need_pb else 0, k if need_pb else 0], need_pg,
                                    need_pb)  # fmt: skip


def groups_backward(dy, x, gain, *, eps, groups, spatial, need_dgain, need_dbias):
    """Gradients of :func:`groups_forward`: ``(dx, dgain, dbias, rstd)``.

    Each (example, group) row runs :func:`rows_backward`'s per-row code with
    the row's expanded gain; the dgain/dbias terms go to float64 partials per
    chunk of rows and per group, summed afterwards in a fixed order over the
    chunks and each channel's spatial values, so the result does not depend
    on the threads. ``dgain``/``dbias`` are (G, C/G) (None where not needed);
    an rstd of 0 or NaN says a variance overflowed (the caller then runs the
    reference).
    """
    rows, length = x.shape
    pdtype = x.dtype if gain is None else np.dtype(gain.dtype)
    g = _per_row(gain, 1, groups, length, spatial, x.dtype)
    nchunks = max(1, min(rows, _MAX_CHUNKS, _MAX_PARTIAL_VALUES // (groups * length)))
    partials = (nchunks, groups, length)
    pg = np.zeros(partials if need_dgain else (1, 1, 1))
    pb = np.zeros(partials if need_dbias else (1, 1, 1))
    dx = np.empty((rows, length), x.dtype)
    rstd = np.empty(rows, x.dtype)
    _spread(
        _groups_backward_kernel, nchunks, x.size,
        dy, x, g, groups, float(eps), dx, nchunks, pg, pb, bool(need_dgain), bool(need_dbias),
        rstd,
    )  # fmt: skip

    def per_channel(p):
        return p.sum(axis=0).reshape(groups, length // spatial, spatial).sum(axis=2).astype(pdtype)

    dgain = per_channel(pg) if need_dgain else None
    dbias = per_channel(pb) if need_dbias else None
    return dx, dgain, dbias, rstd


# --------------------------------------------------------------------------
# One step of the LSTM cell (normcore._reference.cells.LSTM), forward and backward
# --------------------------------------------------------------------------


# Row chunks of a step's dgain/dbias partials (fixed: results do not depend on threads).
_STEP_CHUNKS = 8


@njit(**_JIT)
def _lstm_gate_inputs_kernel(t0, t1, u, ah, gain_h, bias_h, eps, z, rstd_h):
    """``z = u + LN(ah; gain_h, bias_h)``, row by row."""
    for r in range(t0, t1):
        zr, ur = z[r], u[r]
        rstd_h[r] = _normalize_row(ah[r], gain_h, bias_h, eps, True, zr)[1]
        for j in range(zr.shape[0]):
            zr[j] = ur[j] + zr[j]


@njit(**_JIT)
def _lstm_cell_state_kernel(t0, t1, gates_if, g, c_prev, gain_c, bias_c, eps, ln, c, cn, rstd_c):
    """``c = f * c_prev + i * g`` and, with ``ln``, ``cn = LN(c; gain_c, bias_c)``."""
    hidden = c.shape[1]
    for r in range(t0, t1):
        gif, g_r, cp, cr = gates_if[r], g[r], c_prev[r], c[r]
        for j in range(hidden):
            cr[j] = gif[hidden + j] * cp[j] + gif[j] * g_r[j]
        if ln:
            rstd_c[r] = _normalize_row(cr, gain_c, bias_c, eps, True, cn[r])[1]


def _sigmoid(a, cap, out):
    """``out = 1 / (1 + exp(min(-a, cap)))``, the reference's sigmoid
    (``normcore._reference.cells.sigmoid``, whose ``cap`` the caller passes), in place."""
    np.negative(a, out=out)
    np.minimum(out, cap, out=out)
    np.exp(out, out=out)
    np.add(out, 1, out=out)
    np.reciprocal(out, out=out)


def lstm_step(u, ah, c_prev, gain_h, bias_h, gain_c, bias_c, *, eps, exp_cap):
    """One step of the LSTM cell's forward: the arithmetic and layer norms compiled.

    ``u`` (B, 4H) is the step's input term, ``ah = h_prev @ W_h`` (B, 4H),
    ``c_prev`` (B, H); the gains and biases are None for the plain cell.
    C-contiguous, one float32 or float64 dtype. ``u + LN(ah)`` and ``c = f *
    c_prev + i * g`` with ``LN(c)`` run row by row (the per-row code of
    :func:`rows_forward`); the gates' exp and tanh are NumPy's (numba has no
    vectorised exp or tanh here: its scalar ones took 3.6x and 44x NumPy's
    time on a 64x1024 float32 block), with the reference's sigmoid
    (``exp_cap``: the largest argument of exp it allows, so that nothing
    overflows).

    Returns ``(h, c, gates_if, g, o, squashed)`` as the reference cell
    computes them (``gates_if`` the sigmoids of the i and f blocks side by
    side), or None where a layer norm's variance overflowed (the caller then
    runs the reference, whose statistics are scaled).
    """
    rows, hidden = c_prev.shape
    dtype = c_prev.dtype
    ln = gain_h is not None
    if ln:
        z = np.empty((rows, 4 * hidden), dtype)
        rstd_h = np.empty(rows, dtype)
        _spread(_lstm_gate_inputs_kernel, rows, z.size, u, ah, gain_h, bias_h, float(eps), z,
                rstd_h)  # fmt: skip
        if not rstd_h.min() > 0:
            return None
    else:
        z = u + ah
    gates_if = np.empty((rows, 2 * hidden), dtype)
    o = np.empty((rows, hidden), dtype)
    _sigmoid(z[:, : 2 * hidden], exp_cap, gates_if)
    _sigmoid(z[:, 3 * hidden :], exp_cap, o)
    g = np.tanh(z[:, 2 * hidden : 3 * hidden])
    c = np.empty((rows, hidden), dtype)
    cn = np.empty((rows, hidden), dtype) if ln else c
    rstd_c = np.empty(rows if ln else 0, dtype)
    empty = np.empty(0, dtype)
    _spread(
        _lstm_cell_state_kernel, rows, c.size, gates_if, g, c_prev,
        gain_c if ln else empty, bias_c if ln else empty, float(eps), ln, c, cn, rstd_c,
    )  # fmt: skip
    if ln and not rstd_c.min() > 0:
        return None
    squashed = np.tanh(cn)
    return o * squashed, c, gates_if, g, o, squashed


@njit(**_JIT)
def _lstm_step_backward_kernel(
    t0, t1, ah, c_prev, gates_if, g, o, c, squashed, dh, dc, gain_h, gain_c, eps, ln, one,
    nchunks, du, dah, dc_prev, pgh, pbh, pgc, pbc, rstd_h, rstd_c,
):  # fmt: skip
    rows, hidden = c_prev.shape
    dsq = np.empty(hidden, du.dtype)  # d tanh(LN(c)) / d LN(c), times dh * o
    dcn = np.empty(hidden, du.dtype)  # ... through LN(c)'s backward
    none = np.empty(0, du.dtype)  # no given statistics
    for k in range(t0, t1):
        for r in range(k * rows // nchunks, (k + 1) * rows // nchunks):
            dhr, sq, o_r = dh[r], squashed[r], o[r]
            for j in range(hidden):
                dsq[j] = dhr[j] * o_r[j] * (one - sq[j] * sq[j])
            if ln:
                rstd_c[r] = _row_backward(c[r], dsq, gain_c, eps, True, False, none, none, r,
                                          dcn, pgc[k], pbc[k], True, True)  # fmt: skip
            dsq_in = dcn if ln else dsq
            gif, g_r, cp, dcr, dz = gates_if[r], g[r], c_prev[r], dc[r], du[r]
            for j in range(hidden):
                dct = dcr[j] + dsq_in[j]
                i_, f_, g_, o_ = gif[j], gif[hidden + j], g_r[j], o_r[j]
                dz[j] = dct * g_ * i_ * (one - i_)
                dz[hidden + j] = dct * cp[j] * f_ * (one - f_)
                dz[2 * hidden + j] = dct * i_ * (one - g_ * g_)
                dz[3 * hidden + j] = dhr[j] * sq[j] * o_ * (one - o_)
                dc_prev[r, j] = dct * f_
            if ln:
                rstd_h[r] = _row_backward(ah[r], dz, gain_h, eps, True, False, none, none, r,
                                          dah[r], pgh[k], pbh[k], True, True)  # fmt: skip


def lstm_step_backward(ah, c_prev, gates_if, g, o, c, squashed, dh, dc, gain_h, gain_c, *, eps):
    """One step of the LSTM cell's backward, in one pass over each row.

    The arrays are those ``normcore._reference.cells.LSTM.step`` saved
    (``ah`` and ``c`` None without layer norm, as are ``gain_h``/``gain_c``)
    and the gradients ``dh``, ``dc`` of the new state: C-contiguous, one
    float32 or float64 dtype. The cell's elementwise derivative and, with
    layer norm, the backward of ``LN(c)`` and of ``LN(ah)`` (the formulas
    of :func:`rows_backward`, which shares its per-row code) run on a row
    held in cache instead of as a dozen whole-array passes.

    Returns ``(du, dah, dc_prev, grads, rstds)``: ``dah`` is ``du`` without
    layer norm; ``grads`` maps gain_c, bias_c, gain_h, bias_h to their
    gradients (empty without layer norm); ``rstds`` the rstd of every row of
    both layer norms (0 or NaN where a variance overflowed: the caller must
    then use the reference).
    """
    rows, hidden = c_prev.shape
    dtype = c_prev.dtype
    ln = ah is not None
    du = np.empty((rows, 4 * hidden), dtype)
    dah = np.empty((rows, 4 * hidden), dtype) if ln else du
    dc_prev = np.empty((rows, hidden), dtype)
    nchunks = max(1, min(rows, _STEP_CHUNKS))
    sizes = ((nchunks, 4 * hidden), (nchunks, hidden)) if ln else ((1, 1), (1, 1))
    pgh, pbh, pgc, pbc = (np.zeros(sizes[n // 2]) for n in range(4))
    rstd_h, rstd_c = (np.empty(rows if ln else 0, dtype) for _ in range(2))
    empty2, empty1 = np.empty((0, 0), dtype), np.empty(0, dtype)
    _spread(
        _lstm_step_backward_kernel, nchunks, du.size,
        empty2 if ah is None else ah, c_prev, gates_if, g, o, empty2 if c is None else c,
        squashed, dh, dc, empty1 if gain_h is None else gain_h,
        empty1 if gain_c is None else gain_c, float(eps), ln, dtype.type(1), nchunks,
        du, dah, dc_prev, pgh, pbh, pgc, pbc, rstd_h, rstd_c,
    )  # fmt: skip
    grads = {}
    if ln:
        grads = {
            "gain_c": pgc.sum(axis=0).astype(dtype), "bias_c": pbc.sum(axis=0).astype(dtype),
            "gain_h": pgh.sum(axis=0).astype(dtype), "bias_h": pbh.sum(axis=0).astype(dtype),
        }  # fmt: skip
    return du, dah, dc_prev, grads, (rstd_h, rstd_c)


# --------------------------------------------------------------------------
# Channels (batch norm over (A, C, B))
# --------------------------------------------------------------------------


def _tasks(shape):
    """Row chunks and channel blocks of the channel tasks (shape-dependent only)."""
    a_len, c_len, _ = shape
    nra = min(a_len, _MAX_CHUNKS)
    return nra, min(c_len, max(1, 2 * _MAX_CHUNKS // nra))


@njit(cache=True)
def _chan_merge(total_m, total_m2, m, m2, n, seen):
    """Chan's merge, per channel, of ``n`` more values (means ``m``, M2 ``m2``)
    into running totals over ``seen`` values (``total_m``, ``total_m2``, in place)."""
    for c in range(m.size):
        if seen == 0:
            total_m[c], total_m2[c] = m[c], m2[c]
        else:
            delta = m[c] - total_m[c]
            total = seen + n
            total_m[c] += delta * n / total
            total_m2[c] += m2[c] + delta * delta * seen * n / total


@njit(**_JIT)
def _channel_stats_kernel(t0, t1, x, k, nra, ncb, sub_block, part_m, part_m2):
    """Per (row chunk, channel) mean and M2 of ``x - K``, two-pass per sub-block."""
    a_len, c_len, b_len = x.shape
    for t in range(t0, t1):
        ia, jc = t // ncb, t % ncb
        a0, a1 = ia * a_len // nra, (ia + 1) * a_len // nra
        c0, c1 = jc * c_len // ncb, (jc + 1) * c_len // ncb
        width = c1 - c0
        step = max(1, sub_block // (width * b_len))
        s, sq = np.zeros(width), np.zeros(width)
        mf = np.empty(width, x.dtype)  # sub-block means rounded to x's dtype
        seen = 0
        for s0 in range(a0, a1, step):
            s1 = min(s0 + step, a1)
            n = (s1 - s0) * b_len
            s[:] = 0.0
            for a in range(s0, s1):
                for c in range(c0, c1):
                    kc = k[c]
                    acc = 0.0
                    for i in range(b_len):
                        acc += x[a, c, i] - kc
                    s[c - c0] += acc
            for c in range(c0, c1):
                mf[c - c0] = s[c - c0] / n
            sq[:] = 0.0
            for a in range(s0, s1):
                for c in range(c0, c1):
                    kc, mc = k[c], mf[c - c0]
                    acc = 0.0
                    for i in range(b_len):
                        u = _centred(x[a, c, i], kc, mc)
                        acc += np.float64(u) * np.float64(u)
                    sq[c - c0] += acc
            s /= n
            _chan_merge(part_m[ia, c0:c1], part_m2[ia, c0:c1], s, sq, n, seen)
            seen += n


@njit(**_JIT)
def _channels_last_stats_kernel(t0, t1, x, k, nra, sub_block, part_m, part_m2):
    """:func:`_channel_stats_kernel` for a channels-last (A, C) array.

    Each row is contiguous over the channels, so the sums are vectors updated
    row by row (vectorised over C) instead of scalars reduced over B.
    """
    a_len, c_len = x.shape
    for ia in range(t0, t1):
        a0, a1 = ia * a_len // nra, (ia + 1) * a_len // nra
        step = max(1, sub_block // c_len)
        s, sq = np.empty(c_len), np.empty(c_len)
        mf = np.empty(c_len, x.dtype)
        seen = 0
        for s0 in range(a0, a1, step):
            s1 = min(s0 + step, a1)
            n = s1 - s0
            s[:] = 0.0
            for a in range(s0, s1):
                xa = x[a]
                for c in range(c_len):
                    s[c] += xa[c] - k[c]
            for c in range(c_len):
                mf[c] = s[c] / n
            sq[:] = 0.0
            for a in range(s0, s1):
                xa = x[a]
                for c in range(c_len):
                    u = _centred(xa[c], k[c], mf[c])
                    sq[c] += np.float64(u) * np.float64(u)
            s /= n
            _chan_merge(part_m[ia], part_m2[ia], s, sq, n, seen)
            seen += n


@njit(cache=True)
def _chan_total(part_m, part_m2, a_len, b_len, nra):
    """Merge the row chunks' statistics in order; returns (m, var) per channel."""
    c_len = part_m.shape[1]
    m, m2 = np.empty(c_len), np.empty(c_len)
    seen = 0
    for ia in range(nra):
        n = ((ia + 1) * a_len // nra - ia * a_len // nra) * b_len
        _chan_merge(m, m2, part_m[ia], part_m2[ia], n, seen)
        seen += n
    return m, m2 / seen


def _channels_last_chunks(shape):
    """Row chunks of the channels-last kernels (shape-dependent only)."""
    a_len, c_len, _ = shape
    return max(1, min(a_len, _MAX_CHUNKS, _MAX_PARTIAL_VALUES // c_len))


def _channel_stats(x):
    """(K, m, var): K per-channel first value (x's dtype), m and var float64."""
    a_len, c_len, b_len = x.shape
    k = np.ascontiguousarray(x[0, :, 0])
    if b_len == 1:
        nra = _channels_last_chunks(x.shape)
        part_m, part_m2 = np.empty((nra, c_len)), np.empty((nra, c_len))
        x2 = x.reshape(a_len, c_len)
        args = (x2, k, nra, _SUB_BLOCK, part_m, part_m2)
        _spread(_channels_last_stats_kernel, nra, x.size // _CHANNEL_WORK, *args)
    else:
        nra, ncb = _tasks(x.shape)
        part_m, part_m2 = np.empty((nra, c_len)), np.empty((nra, c_len))
        args = (x, k, nra, ncb, _SUB_BLOCK, part_m, part_m2)
        _spread(_channel_stats_kernel, nra * ncb, x.size // _CHANNEL_WORK, *args)
    m, var = _chan_total(part_m, part_m2, a_len, b_len, nra)
    return k, m, var


@njit(**_JIT)
def _affine_kernel(t0, t1, x, k, s, h, nra, ncb, y):
    """``y = (x - k) * s + h`` per channel, in x's dtype."""
    a_len, c_len, b_len = x.shape
    for t in range(t0, t1):
        ia, jc = t // ncb, t % ncb
        for a in range(ia * a_len // nra, (ia + 1) * a_len // nra):
            for c in range(jc * c_len // ncb, (jc + 1) * c_len // ncb):
                kc, sc, hc = k[c], s[c], h[c]
                for i in range(b_len):
                    y[a, c, i] = _affine(x[a, c, i], kc, sc, hc)


@njit(**_JIT)
def _channels_last_affine_kernel(t0, t1, x, k, s, h, nra, y):
    """:func:`_affine_kernel` for a channels-last (A, C) array."""
    a_len, c_len = x.shape
    for ia in range(t0, t1):
        for a in range(ia * a_len // nra, (ia + 1) * a_len // nra):
            xa, ya = x[a], y[a]
            for c in range(c_len):
                ya[c] = _affine(xa[c], k[c], s[c], h[c])


def _channel_affine(x, k, s, h):
    """``(x - k) * s + h`` per channel of an (A, C, B) array, in x's dtype."""
    y = np.empty(x.shape, x.dtype)
    a_len, c_len, b_len = x.shape
    if b_len == 1:
        nra = _channels_last_chunks(x.shape)
        flat = (a_len, c_len)
        args = (x.reshape(flat), k, s, h, nra, y.reshape(flat))
        _spread(_channels_last_affine_kernel, nra, x.size // _CHANNEL_WORK, *args)
    else:
        nra, ncb = _tasks(x.shape)
        _spread(_affine_kernel, nra * ncb, x.size // _CHANNEL_WORK, x, k, s, h, nra, ncb, y)
    return y


def channels_forward(x, gain, bias, *, eps, mean=None, var=None):
    """See :func:`normcore.backends._numpy_kernels.channels_forward`."""
    if (mean is None) != (var is None):
        raise ValueError("mean and var must be given together")
    if _delegate(x):
        return _numpy_kernels.channels_forward(x, gain, bias, eps=eps, mean=mean, var=var)
    acc = x.dtype
    c_len = x.shape[1]
    with np.errstate(all="ignore"):
        if mean is None:
            k, m, v = _channel_stats(x)
            mean, var = (k + m).astype(acc), v.astype(acc)
        else:
            mean, var = _vector(mean, 0, acc, 0), _vector(var, 0, acc, 0)
            k, m, v = mean, 0.0, var
        # From the float64 variance, which float32 squares beyond its range do not overflow.
        s = 1.0 / np.sqrt(np.asarray(v, np.float64) + eps)
        s = s * _vector(gain, c_len, np.float64, 1)
        h = -m * s + _vector(bias, c_len, np.float64, 0)
        k = np.ascontiguousarray(k, acc)
        y = _channel_affine(x, k, s.astype(acc), h.astype(acc))
    return y, mean, var


@njit(**_JIT)
def _channel_sums_kernel(t0, t1, dy, x, shift, offset, nra, ncb, part_u, part_dy, scale, dx):
    """Per (row chunk, channel) sums of dy * ((x - shift) - offset) and of dy.

    With fixed statistics (``scale`` non-empty) dx = dy * scale is formed in
    the same pass.
    """
    a_len, c_len, b_len = x.shape
    write_dx = scale.size > 0
    for t in range(t0, t1):
        ia, jc = t // ncb, t % ncb
        a0, a1 = ia * a_len // nra, (ia + 1) * a_len // nra
        c0, c1 = jc * c_len // ncb, (jc + 1) * c_len // ncb
        part_u[ia, c0:c1] = 0.0
        part_dy[ia, c0:c1] = 0.0
        for a in range(a0, a1):
            for c in range(c0, c1):
                kc, oc = shift[c], offset[c]
                su = sdy = 0.0
                for i in range(b_len):
                    d = dy[a, c, i]
                    su += np.float64(d) * np.float64(_centred(x[a, c, i], kc, oc))
                    sdy += d
                    if write_dx:
                        dx[a, c, i] = d * scale[c]
                part_u[ia, c] += su
                part_dy[ia, c] += sdy


@njit(**_JIT)
def _channels_last_sums_kernel(t0, t1, dy, x, shift, offset, nra, part_u, part_dy, scale, dx):
    """:func:`_channel_sums_kernel` for channels-last (A, C) arrays."""
    a_len, c_len = x.shape
    write_dx = scale.size > 0
    for ia in range(t0, t1):
        su, sdy = part_u[ia], part_dy[ia]
        su[:] = 0.0
        sdy[:] = 0.0
        for a in range(ia * a_len // nra, (ia + 1) * a_len // nra):
            xa, da = x[a], dy[a]
            for c in range(c_len):
                su[c] += np.float64(da[c]) * np.float64(_centred(xa[c], shift[c], offset[c]))
                sdy[c] += da[c]
            if write_dx:
                out = dx[a]
                for c in range(c_len):
                    out[c] = da[c] * scale[c]


@njit(**_JIT)
def _channel_dx_kernel(t0, t1, dy, x, shift, offset, rho, sigma, alpha, nra, ncb, dx):
    """dx = (dy - (((x - shift) - offset) * rho + sigma)) * alpha per channel."""
    a_len, c_len, b_len = x.shape
    for t in range(t0, t1):
        ia, jc = t // ncb, t % ncb
        for a in range(ia * a_len // nra, (ia + 1) * a_len // nra):
            for c in range(jc * c_len // ncb, (jc + 1) * c_len // ncb):
                kc, oc, rc, sc, ac = shift[c], offset[c], rho[c], sigma[c], alpha[c]
                for i in range(b_len):
                    u = _centred(x[a, c, i], kc, oc)
                    dx[a, c, i] = _input_grad(dy[a, c, i], u, rc, sc, ac)


@njit(**_JIT)
def _channels_last_dx_kernel(t0, t1, dy, x, shift, offset, rho, sigma, alpha, nra, dx):
    """:func:`_channel_dx_kernel` for channels-last (A, C) arrays."""
    a_len, c_len = x.shape
    for ia in range(t0, t1):
        for a in range(ia * a_len // nra, (ia + 1) * a_len // nra):
            xa, da, out = x[a], dy[a], dx[a]
            for c in range(c_len):
                u = _centred(xa[c], shift[c], offset[c])
                out[c] = _input_grad(da[c], u, rho[c], sigma[c], alpha[c])


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
    """See :func:`normcore.backends._numpy_kernels.channels_backward`."""
    if _delegate(x):
        return _numpy_kernels.channels_backward(
            dy, x, gain, eps=eps, need_dgain=need_dgain, need_dbias=need_dbias,
            mean=mean, var=var, fixed_stats=fixed_stats, rstd_out=rstd_out,
        )  # fmt: skip
    a_len, c_len, b_len = x.shape
    acc = x.dtype
    pdtype = x.dtype if gain is None else np.dtype(gain.dtype)
    with np.errstate(all="ignore"):
        if mean is None or var is None:
            if fixed_stats:
                raise ValueError("fixed_stats requires mean and var")
            shift, m, v = _channel_stats(x)
            offset = m.astype(acc)
        else:
            shift, v = _vector(mean, 0, acc, 0), _vector(var, 0, acc, 0)
            offset = np.zeros(c_len, acc)
        rstd = 1.0 / np.sqrt(np.asarray(v, np.float64) + eps)  # float64: see channels_forward
        if rstd_out is not None:
            rstd_out[:] = rstd
        alpha = rstd * _vector(gain, c_len, np.float64, 1)
        dx = np.empty(x.shape, acc)
        scale = alpha.astype(acc) if fixed_stats else np.empty(0, acc)
        shift = np.ascontiguousarray(shift, acc)
        if b_len == 1:
            # Channels-last kernels work on (A, C) views of the same memory.
            nra = _channels_last_chunks(x.shape)
            flat = (a_len, c_len)
            dy, x, dx = dy.reshape(flat), x.reshape(flat), dx.reshape(flat)
            part_u, part_dy = np.empty((nra, c_len)), np.empty((nra, c_len))
            _spread(_channels_last_sums_kernel, nra, x.size // _CHANNEL_WORK,
                    dy, x, shift, offset, nra, part_u, part_dy, scale, dx)  # fmt: skip
        else:
            nra, ncb = _tasks(x.shape)
            part_u, part_dy = np.empty((nra, c_len)), np.empty((nra, c_len))
            _spread(_channel_sums_kernel, nra * ncb, x.size // _CHANNEL_WORK,
                    dy, x, shift, offset, nra, ncb, part_u, part_dy, scale, dx)  # fmt: skip
        su, sdy = part_u.sum(axis=0), part_dy.sum(axis=0)
        if not fixed_stats:
            n = a_len * b_len
            rho, sigma = (rstd * rstd * su / n).astype(acc), (sdy / n).astype(acc)
            alpha = alpha.astype(acc)
            if b_len == 1:
                _spread(_channels_last_dx_kernel, nra, x.size // _CHANNEL_WORK,
                        dy, x, shift, offset, rho, sigma, alpha, nra, dx)  # fmt: skip
            else:
                _spread(_channel_dx_kernel, nra * ncb, x.size // _CHANNEL_WORK,
                        dy, x, shift, offset, rho, sigma, alpha, nra, ncb, dx)  # fmt: skip
        dx = dx.reshape(a_len, c_len, b_len)
    dgain = (rstd * su).astype(pdtype) if need_dgain else None
    dbias = sdy.astype(pdtype) if need_dbias else None
    return dx, dgain, dbias

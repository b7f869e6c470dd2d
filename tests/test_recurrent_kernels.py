"""The NumPy adapter's fused LSTM steps (numba) against the reference cell.

``normcore.rnn`` and ``rnn_backward`` on NumPy arrays hand every LSTM step to
``_numba_kernels.lstm_step`` and ``lstm_step_backward``
(``NumPyAdapter.cell_step``/``cell_step_backward``);
``normcore.reference_path()`` runs the reference cell's ``step`` and
``step_backward`` instead. Expected values here come from float64 computations of the
reference path (and, for the plain cell, ``torch.nn.LSTM`` in
``test_rnn_modules.py``); the spy only counts the kernel's calls, so that a
kernel that silently declined could not pass.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

import normcore
from normcore._plumbing import config

numba_kernels = pytest.importorskip(
    "normcore.backends._numba_kernels", reason="numba cannot be imported"
)


@pytest.fixture
def kernel_calls(monkeypatch):
    """The fused kernels' calls, counted (the kernels themselves run).

    ``.forward``: True per step the forward kernel computed (False: it
    declined, an overflow); ``.backward``: one entry per step (True with
    layer norm).
    """
    calls = SimpleNamespace(forward=[], backward=[])
    backward, forward = numba_kernels.lstm_step_backward, numba_kernels.lstm_step

    def counted_backward(*args, **kwargs):
        calls.backward.append(args[0] is not None)  # layer norm: ah is saved
        return backward(*args, **kwargs)

    def counted_forward(*args, **kwargs):
        result = forward(*args, **kwargs)
        calls.forward.append(result is not None)
        return result

    monkeypatch.setattr(numba_kernels, "lstm_step_backward", counted_backward)
    monkeypatch.setattr(numba_kernels, "lstm_step", counted_forward)
    monkeypatch.setattr(config.settings, "numba", True)
    return calls


def _case(rng, layer_norm, steps, batch, inputs, hidden, dtype, scale=1.0):
    params = normcore.rnn_params("lstm", inputs, hidden, layer_norm=layer_norm, dtype="float64")
    params = {k: v + 0.3 * rng.normal(size=v.shape) for k, v in params.items()}
    data = {
        "xs": rng.normal(size=(steps, batch, inputs)),
        "state0": tuple(scale * rng.normal(size=(batch, hidden)) for _ in range(2)),
        "dhs": rng.normal(size=(steps, batch, hidden)),
        "dfinal": tuple(rng.normal(size=(batch, hidden)) for _ in range(2)),
    }
    rounded = {k: v.astype(dtype) for k, v in params.items()}
    cast = {
        k: tuple(s.astype(dtype) for s in v) if isinstance(v, tuple) else v.astype(dtype)
        for k, v in data.items()
    }
    return rounded, cast


def _backward(params, data, layer_norm, mask=None):
    return normcore.rnn_backward(
        data["dhs"], data["xs"], data["state0"], params, cell="lstm", layer_norm=layer_norm,
        dfinal_state=data["dfinal"], mask=mask,
    )  # fmt: skip


def _flat(g):
    return [g.dxs, *g.dstate0, *(g.dparams[k] for k in sorted(g.dparams))]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("layer_norm", [False, True], ids=["plain", "ln"])
@pytest.mark.parametrize(
    "sizes", [(3, 5, 7, 8), (2, 20, 3, 6), (2, 64, 16, 256)], ids=["small", "chunks", "threads"]
)
def test_fused_steps_match_the_reference(kernel_calls, monkeypatch, rng, dtype, layer_norm, sizes):
    """Every step runs the kernels; outputs and gradients equal the float64 reference's.

    ``chunks``: more rows than the backward's 8 chunks of dgain partials;
    ``threads``: the steps' kernels handed to the thread pool (normally only
    from 2**20 values per call).
    """
    steps, batch, inputs, hidden = sizes
    if batch == 64:
        monkeypatch.setattr(numba_kernels._numpy_kernels, "_PARALLEL_MIN", 0)
    params, data = _case(rng, layer_norm, steps, batch, inputs, hidden, dtype)
    hs, final = normcore.rnn(data["xs"], data["state0"], params, cell="lstm",
                             layer_norm=layer_norm)  # fmt: skip
    got = _backward(params, data, layer_norm)
    # the forward's steps, then the backward's forward (a functional call keeps no tape)
    assert kernel_calls.forward == [True] * (2 * steps)
    assert kernel_calls.backward == [layer_norm] * steps
    # float64 truth from the same rounded values, on the reference path
    params64 = {k: v.astype("float64") for k, v in params.items()}
    data64 = {
        k: tuple(s.astype("float64") for s in v) if isinstance(v, tuple) else v.astype("float64")
        for k, v in data.items()
    }
    with normcore.reference_path():
        want = _backward(params64, data64, layer_norm)
        want_hs, want_final = normcore.rnn(data64["xs"], data64["state0"], params64,
                                           cell="lstm", layer_norm=layer_norm)  # fmt: skip
    for g, w in zip([hs, *final, *_flat(got)], [want_hs, *want_final, *_flat(want)], strict=True):
        assert g.dtype == np.dtype(dtype)
        tol = 1e-12 if dtype == "float64" else 2e-5
        np.testing.assert_allclose(g, w, rtol=tol, atol=tol * np.abs(w).max())


def test_masked_steps_and_a_strided_state(kernel_calls, rng):
    """A mask and a non-contiguous c0: the first step declines (reference), the rest fuse."""
    params, data = _case(rng, True, 4, 3, 5, 6, "float64")
    c0 = np.asfortranarray(data["state0"][1])  # same values, another layout
    mask = np.arange(4)[:, None] < np.array([4, 2, 1])
    strided = dict(data, state0=(data["state0"][0], c0))
    got = _backward(params, strided, True, mask=mask)
    # step 0 saw the strided c0: the reference cell ran it, forward and backward
    assert kernel_calls.forward == [True] * 3
    assert kernel_calls.backward == [True] * 3
    with normcore.reference_path():
        want = _backward(params, data, True, mask=mask)
    for g, w in zip(_flat(got), _flat(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)


def test_overflowing_statistics_fall_back_to_the_reference(kernel_calls, rng):
    """float64 cell states near 1e200: LN(c)'s variance overflows in the kernel's sums.

    The kernel reports it (rstd 0) and the reference's scaled statistics
    compute those steps: finite gradients, equal to the reference path's.
    """
    params, data = _case(rng, True, 3, 4, 5, 6, "float64", scale=1e200)
    got = _backward(params, data, True)
    # c near 1e200 from the first step on: the forward kernel declines every step,
    # the backward kernel at least once (its LN(c) variance overflows too)
    assert kernel_calls.forward == [False] * 3
    assert len(kernel_calls.backward) == 3
    with normcore.reference_path():
        want = _backward(params, data, True)
    for g, w in zip(_flat(got), _flat(want), strict=True):
        assert np.isfinite(g).all()
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-10 * np.abs(w).max())


def test_numpy_only_kernels_run_the_reference_cell(kernel_calls, monkeypatch, rng):
    """``NORMCORE_NUMBA=0``: no fused step (the NumPy kernel set has none); same gradients."""
    params, data = _case(rng, True, 3, 4, 5, 6, "float64")
    fused = _backward(params, data, True)
    monkeypatch.setattr(config.settings, "numba", False)
    kernel_calls.forward.clear()
    kernel_calls.backward.clear()
    unfused = _backward(params, data, True)
    assert kernel_calls.forward == kernel_calls.backward == []
    for g, w in zip(_flat(fused), _flat(unfused), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the inf input's own NaNs, on both paths
@pytest.mark.parametrize("case", ["saturated", "inf-input", "batch-first-c0-only"])
@pytest.mark.parametrize("layer_norm", [False, True], ids=["plain", "ln"])
def test_fused_steps_at_the_edges_equal_the_reference_cell(kernel_calls, rng, layer_norm, case):
    """Saturated gates (inputs near 1e30), an inf input, batch-first data with ``(None, c0)``.

    Saturated gates are where the sigmoid's bound shows (the reference's
    sigmoid of -1e30 is 1 / (1 + exp(88)), not 0): the two paths must agree
    value for value there, tiny values included, and NaN for NaN.
    """
    params, data = _case(rng, layer_norm, 3, 2, 4, 5, "float32")
    xs, state0, batch_first = data["xs"], data["state0"], False
    if case == "saturated":
        xs = xs * np.float32(1e30)
    elif case == "inf-input":
        xs = xs.copy()
        xs[0, 0, 0] = np.inf
    else:
        xs, state0, batch_first = (
            np.ascontiguousarray(np.swapaxes(xs, 0, 1)),
            (None, state0[1]),
            True,
        )
    dhs = data["dhs"] if not batch_first else np.ascontiguousarray(np.swapaxes(data["dhs"], 0, 1))

    def both():
        out = normcore.rnn(xs, state0, params, cell="lstm", layer_norm=layer_norm,
                           batch_first=batch_first)  # fmt: skip
        g = normcore.rnn_backward(dhs, xs, state0, params, cell="lstm", layer_norm=layer_norm,
                                  batch_first=batch_first)  # fmt: skip
        return [out[0], *out[1], *_flat(g)]

    got = both()
    assert kernel_calls.forward and kernel_calls.backward  # the fused kernels ran
    with normcore.reference_path():
        want = both()
    for g, w in zip(got, want, strict=True):
        finite = np.abs(w[np.isfinite(w)])
        # saturated: every value relative to itself (a tiny one too); else to the largest
        atol = 0 if case == "saturated" or not finite.size else 1e-5 * finite.max()
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=atol, equal_nan=True)

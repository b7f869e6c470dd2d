"""One time step of each recurrent cell, forward and backward, on the Array API.

Every cell is split the same way so that the sequence loop
(:mod:`normcore._reference.recurrence`) is written once:

* ``project_inputs(ctx, ax)`` turns ``ax = xs @ W_x`` (all steps at once,
  shape ``(T, B, G*H)``) into the input term ``u`` of every step; it does not
  depend on the recurrence, so its layer norms run once over the sequence.
* ``step(ctx, u_t, ah_t, state, save)`` returns ``(new_state, saved)``: the
  next state from the step's input term, ``ah_t = h_{t-1} @ W_h`` and the
  previous state (a tuple whose first entry is ``h``), and, with ``save``,
  the step's activations its backward needs (None without: a forward-only
  call keeps nothing per step). The loop asks the adapter first
  (:meth:`normcore.adapter.Adapter.cell_step`), which may fuse the step.
* ``step_backward(ctx, saved, dnew)`` returns ``(du_t, dah_t, dstate_direct,
  grads)`` from the saved activations, without recomputing the step (the loop
  asks the adapter first, :meth:`normcore.adapter.Adapter.cell_step_backward`,
  which may have one fused kernel for it):
  gradients of ``u_t`` and ``ah_t``, of the previous state through paths
  other than ``ah_t`` (None where there is none) and of the step's own
  parameters. What is saved is a few ``(B, G*H)`` blocks per step, so memory
  stays O(T * B * H).

Every layer norm goes through the dispatch (the adapter's fast path) over the
last axis. Each cell's ``gates`` (its number of blocks of ``H`` columns in
``W_x`` and ``W_h``) and :data:`CELL_IMPLEMENTATIONS` are the one source of the
cell names and parameter layouts used elsewhere (``normcore._functional.rnn_params``).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from .._plumbing import dispatch
from ..adapter import Adapter, Layout

__all__ = ["CELL_IMPLEMENTATIONS", "Context", "exp_cap", "sigmoid"]


class Context(NamedTuple):
    """What every cell function needs besides the data of the step."""

    xp: Any
    adapter: Adapter
    params: Any
    layer_norm: bool
    eps: float
    hidden: int
    nonlinearity: str = "tanh"  # of the plain/LN RNN cell: "tanh" or "relu"

    def _layout(self, a: Any) -> Layout:
        last = (a.ndim - 1,)
        return Layout(last, last, True, self.eps)

    def ln(self, a: Any, gain: str, bias: str, plus: str | None = None) -> Any:
        """Layer norm of ``a`` over its last axis with ``params[gain]``, ``params[bias]``.

        With ``plus``, ``params[plus]`` is added too, as part of the layer
        norm's bias (one pass over ``a``'s size less than adding it after).
        """
        p = self.params
        shift = p[bias] if plus is None else p[bias] + p[plus]
        return dispatch.normalize(self.adapter, self.xp, a, p[gain], shift, self._layout(a)).y

    def ln_backward(self, dy: Any, a: Any, gain: str, bias: str) -> tuple[Any, dict]:
        """Return ``(da, {gain: dgain, bias: dbias})`` of :meth:`ln`."""
        p = self.params
        g = dispatch.normalize_backward(
            self.adapter, self.xp, dy, a, p[gain], p[bias], self._layout(a)
        )
        return g.dx, {gain: g.dgain, bias: g.dbias}

    def sum_rows(self, a: Any) -> Any:
        """Sum over every axis but the last (the gradient of a broadcast bias)."""
        return self.xp.sum(a, axis=tuple(range(a.ndim - 1)))


def sigmoid(xp: Any, a: Any) -> Any:
    """Logistic function ``1 / (1 + exp(-a))`` that never overflows.

    ``exp(-a)`` is capped where it would overflow (``a`` below ``-log(max)``
    of the dtype, where the result is below the smallest normal number
    anyway), so no inf or warning appears and no ``where`` over both branches
    is needed: measured on a 64x256 float32 NumPy block, the capped form
    takes about 0.7x the time of ``exp(-|a|)`` with ``where`` (two divisions
    and a select), and 1.1-1.2x the uncapped expression.
    """
    return 1 / (1 + xp.exp(xp.clip(-a, None, exp_cap(xp, a.dtype))))


def exp_cap(xp: Any, dtype: Any) -> float:
    """The largest argument :func:`sigmoid` lets ``exp`` take in ``dtype``."""
    # The largest argument whose exp is finite, rounded down: 88 for float32,
    # 709 for float64, 11 for float16. (Not lru_cached: torch.compile warns on
    # that; finfo is cached by the libraries.)
    return float(int(math.log(float(xp.finfo(dtype).max))))


def _merge(*parts: dict) -> dict:
    merged: dict = {}
    for part in parts:
        merged.update(part)
    return merged


class ElmanRNN:
    """``h_t = tanh(a_t)`` (plain, ``a_t + b``) or ``tanh(LN(a_t; gain, bias))`` (eq. 4).

    With ``ctx.nonlinearity == "relu"``, ``relu`` instead of ``tanh``.
    """

    name = "rnn"  # its key in CELL_IMPLEMENTATIONS, and what adapters are told
    gates = 1  # one block: the pre-activation

    def project_inputs(self, ctx: Context, ax: Any) -> Any:
        return ax if ctx.layer_norm else ax + ctx.params["b"]

    def project_inputs_backward(self, ctx: Context, du: Any, ax: Any) -> tuple[Any, dict]:
        return du, ({} if ctx.layer_norm else {"b": ctx.sum_rows(du)})

    def step(self, ctx: Context, u: Any, ah: Any, state: tuple, save: bool) -> tuple:
        xp = ctx.xp
        a = u + ah
        pre = ctx.ln(a, "gain", "bias") if ctx.layer_norm else a
        if ctx.nonlinearity == "tanh":
            h = xp.tanh(pre)
        else:  # relu; NaN stays NaN, as torch.relu
            h = xp.where(pre < 0, xp.zeros_like(pre), pre)
        # The backward needs h, and a for the layer norm's backward.
        return (h,), ((a if ctx.layer_norm else None, h) if save else None)

    def step_backward(self, ctx: Context, saved: tuple, dnew: tuple) -> tuple:
        xp = ctx.xp
        a, h = saved
        dh = dnew[0]
        if ctx.nonlinearity == "tanh":
            da = dh * (1 - h * h)
        else:  # relu: the gradient passes where the output is positive (torch's at 0)
            da = xp.where(h > 0, dh, xp.zeros_like(dh))
        grads: dict = {}
        if ctx.layer_norm:
            da, grads = ctx.ln_backward(da, a, "gain", "bias")
        return da, da, (None,), grads


class LSTM:
    """Gate blocks ``(i, f, g, o)``; with layer norm, eqs. 20-22 of Ba et al."""

    name = "lstm"  # its key in CELL_IMPLEMENTATIONS, and what adapters are told
    gates = 4  # blocks i, f, g, o

    def project_inputs(self, ctx: Context, ax: Any) -> Any:
        if ctx.layer_norm:  # LN(ax) + b: b joins the layer norm's own bias
            return ctx.ln(ax, "gain_x", "bias_x", plus="b")
        return ax + ctx.params["b"]

    def project_inputs_backward(self, ctx: Context, du: Any, ax: Any) -> tuple[Any, dict]:
        grads = {"b": ctx.sum_rows(du)}
        if not ctx.layer_norm:
            return du, grads
        dax, ln_grads = ctx.ln_backward(du, ax, "gain_x", "bias_x")
        return dax, _merge(grads, ln_grads)

    def step(self, ctx: Context, u: Any, ah: Any, state: tuple, save: bool) -> tuple:
        xp, hidden, ln = ctx.xp, ctx.hidden, ctx.layer_norm
        c_prev = state[1]
        z = u + (ctx.ln(ah, "gain_h", "bias_h") if ln else ah)
        gates_if = sigmoid(xp, z[..., : 2 * hidden])  # one call for the adjacent i and f
        i, f = gates_if[..., :hidden], gates_if[..., hidden:]
        g = xp.tanh(z[..., 2 * hidden : 3 * hidden])
        o = sigmoid(xp, z[..., 3 * hidden :])
        c = f * c_prev + i * g
        squashed = xp.tanh(ctx.ln(c, "gain_c", "bias_c") if ln else c)
        # The carried cell state is c_t, not LN(c_t).
        new = (o * squashed, c)
        if not save:
            return new, None
        # ah and c only feed the layer norms' backward; i and f stay one (B, 2H) block.
        return new, (ah if ln else None, c_prev, gates_if, g, o, c if ln else None, squashed)

    def step_backward(self, ctx: Context, saved: tuple, dnew: tuple) -> tuple:
        xp, hidden = ctx.xp, ctx.hidden
        ah, c_prev, gates_if, g, o, c, squashed = saved
        i, f = gates_if[..., :hidden], gates_if[..., hidden:]
        dh, dc = dnew
        do = dh * squashed
        dsquashed = dh * o * (1 - squashed * squashed)
        grads: dict = {}
        if ctx.layer_norm:
            dsquashed, grads = ctx.ln_backward(dsquashed, c, "gain_c", "bias_c")
        dc = dc + dsquashed
        dz = xp.concat(
            [
                dc * g * i * (1 - i),
                dc * c_prev * f * (1 - f),
                dc * i * (1 - g * g),
                do * o * (1 - o),
            ],
            axis=-1,
        )
        dah = dz
        if ctx.layer_norm:
            dah, ln_grads = ctx.ln_backward(dz, ah, "gain_h", "bias_h")
            grads = _merge(grads, ln_grads)
        return dz, dah, (None, dc * f), grads


class GRU:
    """Blocks ``(r, z, n)``. Plain: PyTorch's GRU; with layer norm: eqs. 26-28.

    Plain: ``n = tanh(u_n + r * (W_hn h + b_hn))``, ``h' = (1 - z) * n + z * h``.
    Layer norm: ``n = tanh(LN(W x) + r * LN(U h))``, ``h' = (1 - z) * h + z * n``
    (the paper's update gate weighs the candidate, PyTorch's the old state).
    """

    name = "gru"  # its key in CELL_IMPLEMENTATIONS, and what adapters are told
    gates = 3  # blocks r, z, n

    def project_inputs(self, ctx: Context, ax: Any) -> Any:
        if not ctx.layer_norm:
            return ax + ctx.params["b_x"]
        h2 = 2 * ctx.hidden
        gates = ctx.ln(ax[..., :h2], "gain_x", "bias_x")
        return ctx.xp.concat([gates, ctx.ln(ax[..., h2:], "gain_xn", "bias_xn")], axis=-1)

    def project_inputs_backward(self, ctx: Context, du: Any, ax: Any) -> tuple[Any, dict]:
        if not ctx.layer_norm:
            return du, {"b_x": ctx.sum_rows(du)}
        h2 = 2 * ctx.hidden
        dgates, gate_grads = ctx.ln_backward(du[..., :h2], ax[..., :h2], "gain_x", "bias_x")
        dcand, cand_grads = ctx.ln_backward(du[..., h2:], ax[..., h2:], "gain_xn", "bias_xn")
        return ctx.xp.concat([dgates, dcand], axis=-1), _merge(gate_grads, cand_grads)

    def _recurrent_terms(self, ctx: Context, ah: Any) -> tuple[Any, Any]:
        """Return the recurrent terms of the gates (B, 2H) and of the candidate (B, H)."""
        h2 = 2 * ctx.hidden
        if ctx.layer_norm:
            return (
                ctx.ln(ah[..., :h2], "gain_h", "bias_h"),
                ctx.ln(ah[..., h2:], "gain_hn", "bias_hn"),
            )
        shifted = ah + ctx.params["b_h"]
        return shifted[..., :h2], shifted[..., h2:]

    def _recurrent_terms_backward(self, ctx, dgates, dcand, ah):
        if not ctx.layer_norm:
            dah = ctx.xp.concat([dgates, dcand], axis=-1)
            return dah, {"b_h": ctx.sum_rows(dah)}
        h2 = 2 * ctx.hidden
        dgate_in, gate_grads = ctx.ln_backward(dgates, ah[..., :h2], "gain_h", "bias_h")
        dcand_in, cand_grads = ctx.ln_backward(dcand, ah[..., h2:], "gain_hn", "bias_hn")
        return ctx.xp.concat([dgate_in, dcand_in], axis=-1), _merge(gate_grads, cand_grads)

    def step(self, ctx: Context, u: Any, ah: Any, state: tuple, save: bool) -> tuple:
        xp, hidden = ctx.xp, ctx.hidden
        h = state[0]
        gates_h, cand_h = self._recurrent_terms(ctx, ah)
        gates_rz = sigmoid(xp, u[..., : 2 * hidden] + gates_h)  # one call for r and z
        r, z = gates_rz[..., :hidden], gates_rz[..., hidden:]
        n = xp.tanh(u[..., 2 * hidden :] + r * cand_h)
        keep = 1 - z if ctx.layer_norm else z  # weight of the old state
        new = (keep * h + (1 - keep) * n,)
        # ah only feeds the layer norms' backward.
        saved = (ah if ctx.layer_norm else None, h, r, z, n, cand_h, keep) if save else None
        return new, saved

    def step_backward(self, ctx: Context, saved: tuple, dnew: tuple) -> tuple:
        xp = ctx.xp
        ah, h, r, z, n, cand_h, keep = saved
        dh = dnew[0]
        dkeep = dh * (h - n)
        dz = -dkeep if ctx.layer_norm else dkeep
        dn_pre = dh * (1 - keep) * (1 - n * n)
        dr_pre = dn_pre * cand_h * r * (1 - r)
        dz_pre = dz * z * (1 - z)
        du = xp.concat([dr_pre, dz_pre, dn_pre], axis=-1)
        dah, grads = self._recurrent_terms_backward(
            ctx, xp.concat([dr_pre, dz_pre], axis=-1), dn_pre * r, ah
        )
        return du, dah, (dh * keep,), grads


CELL_IMPLEMENTATIONS = {"rnn": ElmanRNN(), "lstm": LSTM(), "gru": GRU()}

"""The recurrent sequence loop and its backpropagation through time, written once for all cells.

The input projection ``xs @ W_x`` and whatever depends only on it run once
for all steps; each step adds ``h_{t-1} @ W_h`` and applies the cell
(:mod:`normcore._reference.cells`). The backward keeps the state entering
every step (O(T * B * H)), recomputes each step from it in reverse order and
does the two weight-gradient matmuls once at the end. Inputs here are
validated and time-major (:mod:`normcore._functional.rnn` does both).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .cells import Context

__all__ = ["Sequence", "backward", "forward"]


class Sequence(NamedTuple):
    """A validated recurrent call, time-major: ``xs`` is ``(T, B, I)``, ``mask`` ``(T, B)``."""

    ctx: Context
    cell: Any
    xs: Any
    state0: tuple
    mask: Any


def _mask_column(seq: Sequence, t: int) -> Any:
    return None if seq.mask is None else seq.mask[t, :, None]


def forward(seq: Sequence, keep_states: bool) -> tuple[list, tuple, list, Any, Any]:
    """Run the sequence; return ``(outputs, final_state, states, u, ax)``.

    ``states[t]`` (only with ``keep_states``) is the state entering step ``t``;
    ``ax = xs @ W_x`` and ``u`` is the cell's input term of every step.
    """
    ctx, xp, p = seq.ctx, seq.ctx.xp, seq.ctx.params
    ax = xp.matmul(seq.xs, p["W_x"])
    u = seq.cell.project_inputs(ctx, ax)
    state, outputs, states = seq.state0, [], []
    for t in range(seq.xs.shape[0]):
        if keep_states:
            states.append(state)
        new = seq.cell.step(ctx, u[t, ...], xp.matmul(state[0], p["W_h"]), state)
        m = _mask_column(seq, t)
        if m is None:
            outputs.append(new[0])
        else:  # padded steps carry the state and output zeros
            new = tuple(xp.where(m, n, old) for n, old in zip(new, state, strict=True))
            outputs.append(xp.where(m, new[0], xp.zeros_like(new[0])))
        state = new
    return outputs, state, states, u, ax


def backward(seq: Sequence, dhs: Any, dfinal: tuple) -> tuple[Any, tuple, dict]:
    """Backpropagation through time: ``(dxs, dstate0, dparams)`` for ``T >= 1`` steps.

    ``dhs`` is the time-major gradient of the outputs and ``dfinal`` that of
    the final state (a tuple like the state). ``dparams`` has every key of
    the parameters, in their order.
    """
    ctx, xp, p = seq.ctx, seq.ctx.xp, seq.ctx.params
    steps = seq.xs.shape[0]
    _, _, states, u, ax = forward(seq, keep_states=True)
    w_h_t = xp.permute_dims(p["W_h"], (1, 0))
    dstate, dus, dahs, step_grads = dfinal, [None] * steps, [None] * steps, {}
    for t in reversed(range(steps)):
        dnew = (dstate[0] + dhs[t, ...], *dstate[1:])
        m = _mask_column(seq, t)
        if m is not None:  # a padded step passes the state's gradient straight through
            passed = tuple(xp.where(m, xp.zeros_like(d), d) for d in dstate)
            dnew = tuple(xp.where(m, d, xp.zeros_like(d)) for d in dnew)
        state = states[t]
        ah = xp.matmul(state[0], p["W_h"])
        dus[t], dahs[t], direct, grads = seq.cell.step_backward(ctx, u[t, ...], ah, state, dnew)
        for name, g in grads.items():
            step_grads[name] = g if name not in step_grads else step_grads[name] + g
        dh_prev = xp.matmul(dahs[t], w_h_t)
        dprev = [dh_prev if direct[0] is None else dh_prev + direct[0], *direct[1:]]
        if m is not None:
            dprev = [d + pass_d for d, pass_d in zip(dprev, passed, strict=True)]
        dstate = tuple(dprev)

    dax, input_grads = seq.cell.project_inputs_backward(ctx, xp.stack(dus), ax)
    dparams = {**step_grads, **input_grads}
    dparams["W_x"] = _weight_grad(xp, seq.xs, dax)
    dparams["W_h"] = _weight_grad(xp, xp.stack([s[0] for s in states]), xp.stack(dahs))
    dxs = xp.matmul(dax, xp.permute_dims(p["W_x"], (1, 0)))
    return dxs, dstate, {k: dparams[k] for k in p}


def _weight_grad(xp: Any, inputs: Any, doutputs: Any) -> Any:
    """``sum_t inputs_t^T @ doutputs_t`` as one matmul over all (time, batch) rows."""
    rows = inputs.shape[0] * inputs.shape[1]
    flat_in = xp.reshape(inputs, (rows, inputs.shape[2]))
    flat_out = xp.reshape(doutputs, (rows, doutputs.shape[2]))
    return xp.matmul(xp.permute_dims(flat_in, (1, 0)), flat_out)

"""The recurrent sequence loop and its backpropagation through time, written once for all cells.

The input projection ``xs @ W_x`` and whatever depends only on it run once
for all steps; each step adds ``h_{t-1} @ W_h`` and applies the cell
(:mod:`normcore._reference.cells`). The backward runs the forward once,
keeping what each step's backward needs (the cell's saved activations and the
state entering the step: a few ``(B, G*H)`` blocks per step, O(T * B * H)),
unless the caller kept that tape from its own forward (a training module),
walks the steps in reverse order from those, and does the two
weight-gradient matmuls once at the end. Inputs here are validated and
time-major (:mod:`normcore._functional.rnn` does both).

Sequence-sized arrays (the input terms, the output gradients, the mask) are
split into their steps once, by ``unstack``, never indexed step by step:
under autograd (PyTorch) the backward of each ``u[t]`` would materialize a
zero gradient of the whole ``(T, B, G*H)`` array, which made training
quadratic in ``T``; ``unstack``'s backward is one ``stack``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .._plumbing import dispatch
from .cells import Context

__all__ = ["Sequence", "backward", "forward"]


class Sequence(NamedTuple):
    """A validated recurrent call, time-major: ``xs`` is ``(T, B, I)``, ``mask`` ``(T, B)``."""

    ctx: Context
    cell: Any
    xs: Any
    state0: tuple
    mask: Any


class Tape(NamedTuple):
    """What :func:`forward` keeps for the backward (with ``save``)."""

    h_prev: list  # the hidden state entering every step, for the gradient of W_h
    saved: list  # every step's activations, as its cell's step() saved them
    ax: Any  # xs @ W_x, for the backward of the input terms


def _steps(xp: Any, a: Any) -> list:
    """The steps of a time-major array, taken at once (see the module docstring)."""
    return list(xp.unstack(a, axis=0))


def _mask_columns(seq: Sequence) -> list:
    """Per step, the ``(B, 1)`` mask column (or None without a mask)."""
    if seq.mask is None:
        return [None] * seq.xs.shape[0]
    return _steps(seq.ctx.xp, seq.mask[..., None])


def forward(seq: Sequence, save: bool) -> tuple[list, tuple, Tape | None]:
    """Run the sequence; return ``(outputs, final_state, tape)``.

    ``outputs`` is the list of every step's output; ``tape`` (None without
    ``save``) what :func:`backward` needs.
    """
    ctx, xp, p = seq.ctx, seq.ctx.xp, seq.ctx.params
    ax = _sequence_matmul(xp, seq.xs, p["W_x"])
    u = seq.cell.project_inputs(ctx, ax)
    state, outputs = seq.state0, []
    tape = Tape([], [], ax) if save else None
    for u_t, m in zip(_steps(xp, u), _mask_columns(seq), strict=True):
        ah_t = xp.matmul(state[0], p["W_h"])
        new, saved = dispatch.cell_step(ctx.adapter, seq.cell, ctx, u_t, ah_t, state, save)
        if tape is not None:
            tape.h_prev.append(state[0])
            tape.saved.append(saved)
        if m is None:
            outputs.append(new[0])
        else:  # padded steps carry the state and output zeros
            new = tuple(xp.where(m, n, old) for n, old in zip(new, state, strict=True))
            outputs.append(xp.where(m, new[0], xp.zeros_like(new[0])))
        state = new
    return outputs, state, tape


def backward(
    seq: Sequence, dhs: Any, dfinal: tuple, tape: Tape | None = None
) -> tuple[Any, tuple, dict]:
    """Backpropagation through time: ``(dxs, dstate0, dparams)`` for ``T >= 1`` steps.

    ``dhs`` is the time-major gradient of the outputs and ``dfinal`` that of
    the final state (a tuple like the state). ``dparams`` has every key of
    the parameters, in their order. ``tape`` is what ``forward(seq,
    save=True)`` kept, if the caller has it (a training module's call): the
    forward then does not run again, and the tape is left as it was.
    """
    ctx, xp, p = seq.ctx, seq.ctx.xp, seq.ctx.params
    steps = seq.xs.shape[0]
    own = tape is None
    if own:
        _, _, tape = forward(seq, save=True)
    # Our own tape's steps are dropped as soon as they are used; a caller's stays whole.
    saved_steps = tape.saved if own else list(tape.saved)
    w_h_t = xp.permute_dims(p["W_h"], (1, 0))
    dhs_steps, masks = _steps(xp, dhs), _mask_columns(seq)
    dstate, dus, dahs, step_grads = dfinal, [None] * steps, [None] * steps, {}
    for t in reversed(range(steps)):
        dnew = (dstate[0] + dhs_steps[t], *dstate[1:])
        m = masks[t]
        if m is not None:  # a padded step passes the state's gradient straight through
            passed = tuple(xp.where(m, xp.zeros_like(d), d) for d in dstate)
            dnew = tuple(xp.where(m, d, xp.zeros_like(d)) for d in dnew)
        saved, saved_steps[t] = saved_steps[t], None
        dus[t], dahs[t], direct, grads = dispatch.cell_step_backward(
            ctx.adapter, seq.cell, ctx, saved, dnew
        )
        for name, g in grads.items():
            step_grads[name] = g if name not in step_grads else step_grads[name] + g
        dh_prev = xp.matmul(dahs[t], w_h_t)
        dprev = [dh_prev if direct[0] is None else dh_prev + direct[0], *direct[1:]]
        if m is not None:
            dprev = [d + pass_d for d, pass_d in zip(dprev, passed, strict=True)]
        dstate = tuple(dprev)

    dus_stacked = xp.stack(dus)
    dax, input_grads = seq.cell.project_inputs_backward(ctx, dus_stacked, tape.ax)
    dparams = {**step_grads, **input_grads}
    dparams["W_x"] = _weight_grad(xp, seq.xs, dax)
    # A plain cell's dah_t is its du_t (the same array): stacked once.
    same = all(dah is du for dah, du in zip(dahs, dus, strict=True))
    dahs_stacked = dus_stacked if same else xp.stack(dahs)
    dparams["W_h"] = _weight_grad(xp, xp.stack(tape.h_prev), dahs_stacked)
    dxs = _sequence_matmul(xp, dax, xp.permute_dims(p["W_x"], (1, 0)))
    return dxs, dstate, {k: dparams[k] for k in p}


def _sequence_matmul(xp: Any, a: Any, w: Any) -> Any:
    """``a @ w`` for a ``(T, B, K)`` sequence as one ``(T * B, K)`` matrix product.

    NumPy multiplies a 3-D array step by step (T products of B rows): one
    product of all rows took 0.73x the time (T=50, B=64, K=256, 1024 columns).
    """
    steps, batch = a.shape[0], a.shape[1]
    flat = xp.matmul(xp.reshape(a, (steps * batch, a.shape[2])), w)
    return xp.reshape(flat, (steps, batch, w.shape[1]))


def _weight_grad(xp: Any, inputs: Any, doutputs: Any) -> Any:
    """``sum_t inputs_t^T @ doutputs_t`` as one matmul over all (time, batch) rows."""
    rows = inputs.shape[0] * inputs.shape[1]
    flat_in = xp.reshape(inputs, (rows, inputs.shape[2]))
    flat_out = xp.reshape(doutputs, (rows, doutputs.shape[2]))
    return xp.matmul(xp.permute_dims(flat_in, (1, 0)), flat_out)

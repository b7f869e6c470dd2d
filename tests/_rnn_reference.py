"""Float64 PyTorch references of the recurrent cells, written independently of normcore.

The layer-normalized cells are the paper's equations written in torch and
differentiated by autograd; the plain ones are ``torch.nn.RNN/LSTM/GRU``. The
parameter layout is normcore's documented one (weights multiply row vectors
from the right, gate blocks in PyTorch's order), mapped here by hand.
"""

from __future__ import annotations

import numpy as np
import pytest

MODULES = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}


def _ln(torch, a, gain, bias, eps):
    return torch.nn.functional.layer_norm(a, (a.shape[-1],), gain, bias, eps)


def _ln_step(torch, cell, p, x, state, eps):
    """One step of the layer-normalized cell (eqs. 4, 20-22, 26-28)."""
    sig = torch.sigmoid
    if cell == "rnn":
        return (
            torch.tanh(_ln(torch, x @ p["W_x"] + state[0] @ p["W_h"], p["gain"], p["bias"], eps)),
        )
    if cell == "lstm":
        h, c = state
        z = (
            _ln(torch, h @ p["W_h"], p["gain_h"], p["bias_h"], eps)
            + _ln(torch, x @ p["W_x"], p["gain_x"], p["bias_x"], eps)
            + p["b"]
        )
        i, f, g, o = z.chunk(4, dim=-1)
        c = sig(f) * c + sig(i) * torch.tanh(g)
        return sig(o) * torch.tanh(_ln(torch, c, p["gain_c"], p["bias_c"], eps)), c
    h = state[0]
    hidden = h.shape[-1]
    wx, wh = p["W_x"], p["W_h"]
    gates = _ln(torch, h @ wh[:, : 2 * hidden], p["gain_h"], p["bias_h"], eps) + _ln(
        torch, x @ wx[:, : 2 * hidden], p["gain_x"], p["bias_x"], eps
    )
    r, z = sig(gates).chunk(2, dim=-1)
    candidate = torch.tanh(
        _ln(torch, x @ wx[:, 2 * hidden :], p["gain_xn"], p["bias_xn"], eps)
        + r * _ln(torch, h @ wh[:, 2 * hidden :], p["gain_hn"], p["bias_hn"], eps)
    )
    return ((1 - z) * h + z * candidate,)


def _plain_module(torch, cell, p):
    inputs, hidden = p["W_x"].shape[0], p["W_h"].shape[0]
    module = getattr(torch.nn, MODULES[cell])(inputs, hidden, dtype=torch.float64)
    bias_ih = p["b_x"] if cell == "gru" else p["b"]
    bias_hh = p["b_h"] if cell == "gru" else torch.zeros_like(p["b"])
    with torch.no_grad():
        module.weight_ih_l0.copy_(p["W_x"].T)
        module.weight_hh_l0.copy_(p["W_h"].T)
        module.bias_ih_l0.copy_(bias_ih)
        module.bias_hh_l0.copy_(bias_hh)
    return module


def _plain_grads(cell, module):
    grads = {"W_x": module.weight_ih_l0.grad.T, "W_h": module.weight_hh_l0.grad.T}
    if cell == "gru":
        grads.update(b_x=module.bias_ih_l0.grad, b_h=module.bias_hh_l0.grad)
    else:
        grads["b"] = module.bias_ih_l0.grad
    return grads


def reference(cell, layer_norm, xs, state0, params, dhs, dfinal, eps=1e-5):
    """Return float64 NumPy ``(hs, final, dxs, dstate0, dparams)``; states are tuples."""
    torch = pytest.importorskip("torch")
    t = lambda a: torch.tensor(np.asarray(a, np.float64), requires_grad=True)  # noqa: E731
    x = t(xs)
    state = tuple(t(s) for s in state0)
    if layer_norm:
        p = {k: t(v) for k, v in params.items()}
        outputs, current = [], state
        for step in range(x.shape[0]):
            current = _ln_step(torch, cell, p, x[step], current, eps)
            outputs.append(current[0])
        hs = torch.stack(outputs) if outputs else torch.zeros(0, *state[0].shape)
        final = current
    else:
        module = _plain_module(torch, cell, {k: torch.tensor(v) for k, v in params.items()})
        initial = tuple(s[None] for s in state)
        hs, last = module(x, initial if cell == "lstm" else initial[0])
        final = tuple(s[0] for s in (last if cell == "lstm" else (last,)))
    loss = (hs * torch.tensor(dhs)).sum()
    loss = loss + sum((f * torch.tensor(d)).sum() for f, d in zip(final, dfinal, strict=True))
    loss.backward()
    grads = {k: v.grad for k, v in p.items()} if layer_norm else _plain_grads(cell, module)
    numpy = lambda a: a.detach().numpy()  # noqa: E731
    return (
        numpy(hs),
        tuple(numpy(f) for f in final),
        numpy(x.grad),
        tuple(numpy(s.grad) for s in state),
        {k: numpy(v) for k, v in grads.items()},
    )

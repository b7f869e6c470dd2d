"""Recurrent networks over whole sequences: :func:`rnn` and :func:`rnn_backward`.

Validation and layout (``batch_first``, masks, initial states) live here; the
loop and backpropagation through time, written once for every cell, are
:mod:`normcore._reference.recurrence`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, NamedTuple

from .._plumbing import dispatch
from .._plumbing.compat import device_of, library_label, namespace_of
from .._plumbing.registry import adapter_for
from .._plumbing.validation import (
    check_arrays,
    check_bool,
    check_choice,
    check_eps,
    check_eps_in,
    check_named_arrays,
    check_real,
    check_shapes,
    matrix_size,
)
from .._reference import recurrence
from .._reference.cells import CELL_IMPLEMENTATIONS, Context
from ..typing import Array
from .rnn_params import CELLS, param_names, param_shapes

NONLINEARITIES = ("tanh", "relu")  # of cell="rnn"

__all__ = ["RNNGradients", "rnn", "rnn_backward"]


class RNNGradients(NamedTuple):
    """Gradients returned by :func:`rnn_backward`."""

    dxs: Any
    dstate0: Any  # an array, or (dh0, dc0) for the LSTM
    dparams: dict


class _Call(NamedTuple):
    """A validated call: the time-major sequence and the caller's layout."""

    seq: recurrence.Sequence
    batch_first: bool


def _time_major(xp: Any, a: Any, batch_first: bool) -> Any:
    if a is None or not batch_first:
        return a
    return xp.permute_dims(a, (1, 0, *range(2, a.ndim)))


def _check_params(
    xs: Any, params: Any, cell: str, layer_norm: bool, input_size: int | None = None
) -> int:
    """Check keys, library, device, dtype and shape of every parameter; return H.

    ``input_size`` is the last axis of ``xs`` unless given (a stacked layer's).
    """
    names = param_names(cell, layer_norm)
    what = f"for cell={cell!r}, layer_norm={layer_norm}"
    # adopted: a dask xs takes NumPy parameters (Adapter.adopt; every other adapter refuses)
    check_named_arrays(params, names, "params", what, adopt=True, xs=xs)
    hidden = matrix_size(params["W_h"], "params['W_h']", 0)
    size, source = (
        (xs.shape[-1], "the last axis of xs")
        if input_size is None
        else (input_size, "the layer below's outputs")
    )
    check_shapes(
        params,
        param_shapes(cell, size, hidden, layer_norm),
        "params",
        f"{what} with input size {size} ({source}) and hidden size {hidden} (the rows of W_h)",
    )
    return hidden


def _state_tuple(state: Any, cell: str, name: str) -> tuple | None:
    """Return the state as a tuple of arrays, checking its structure for ``cell``."""
    if state is None:
        return None
    if cell == "lstm":
        if not (isinstance(state, tuple | list) and len(state) == 2):
            got = (
                f"a {type(state).__name__} of length {len(state)}"
                if isinstance(state, tuple | list)
                else library_label(state)
            )
            raise TypeError(
                f"{name} for cell='lstm' must be a tuple (h, c) of two arrays, got {got}"
            )
        return tuple(state)
    if isinstance(state, tuple | list):
        raise TypeError(f"{name} for cell={cell!r} must be one array h, got {library_label(state)}")
    return (state,)


def _check_state(xs, state, cell, hidden, name) -> tuple | None:
    parts = _state_tuple(state, cell, name)
    if parts is None:
        return None
    labels = ("h", "c") if cell == "lstm" else ("",)
    named = {
        f"{name}{'.' + lab if lab else ''}": part
        for lab, part in zip(labels, parts, strict=False)
        if part is not None or cell != "lstm"  # a None part of (h, c) means zeros
    }
    check_arrays(xs, x_name="xs", exact_dtype=True, **named)
    for label, part in named.items():
        if tuple(part.shape) != (xs.shape[1], hidden):
            raise ValueError(
                f"{label} must have shape (batch, hidden) = {(xs.shape[1], hidden)}, "
                f"got {tuple(part.shape)}"
            )
    return parts


def _zeros_for_none(state: tuple | None, zeros: Any, cell: str) -> tuple:
    """The state with ``zeros`` for None, and for each None part of an LSTM's ``(h, c)``."""
    if state is None:
        return (zeros, zeros) if cell == "lstm" else (zeros,)
    return tuple(zeros if part is None else part for part in state)


def _check_mask(xs: Any, mask: Any, batch_first: bool) -> None:
    if mask is None:
        return
    check_arrays(xs, x_name="xs", others_kind="bool", mask=mask)
    expected = tuple(xs.shape[:2])
    if tuple(mask.shape) != expected:
        layout = "(batch, time)" if batch_first else "(time, batch)"
        raise ValueError(f"mask must have shape {layout} = {expected}, got {tuple(mask.shape)}")


def _check_options(xs, cell, layer_norm, eps, batch_first, nonlinearity):
    """Check the options and ``xs`` of a call; return ``(xp, eps)``."""
    check_choice(cell, CELLS, "cell")
    check_bool(layer_norm, "layer_norm")
    check_choice(nonlinearity, NONLINEARITIES, "nonlinearity")
    if nonlinearity != "tanh" and cell != "rnn":
        raise ValueError(
            f"nonlinearity={nonlinearity!r} is for cell='rnn' only (the gated cells' "
            f"nonlinearities are fixed), got cell={cell!r}"
        )
    check_bool(batch_first, "batch_first")
    eps = check_eps(eps)
    xp = check_arrays(xs, x_name="xs")
    if xs.ndim != 3:
        layout = "(batch, time, input)" if batch_first else "(time, batch, input)"
        raise ValueError(f"xs must be 3-D {layout}, got shape {tuple(xs.shape)}")
    return xp, eps


def _prepare(xs, state0, params, *, cell, layer_norm, mask, eps, batch_first, nonlinearity):
    """Validate a call; return ``(_Call, hidden)`` without computing anything."""
    xp, eps = _check_options(xs, cell, layer_norm, eps, batch_first, nonlinearity)
    hidden = _check_params(xs, params, cell, layer_norm)
    _check_mask(xs, mask, batch_first)
    adapter = adapter_for(xs)
    params = {k: dispatch.adopt(adapter, xp, xs, v) for k, v in params.items()}
    if layer_norm:  # the rule of every layer norm: eps must be a normal number where it is added
        check_eps_in(eps, xp, adapter.accumulation_dtype(xp, xs.dtype))
    xs_tm = _time_major(xp, xs, batch_first)
    state = _check_state(xs_tm, state0, cell, hidden, "state0")
    zeros = xp.zeros((xs_tm.shape[1], hidden), dtype=xs.dtype, device=device_of(xs))
    state = _zeros_for_none(state, zeros, cell)
    mask_tm = _time_major(xp, mask, batch_first)
    if mask_tm is not None:
        # Padded steps compute on zeros, whatever the padding holds: their results
        # are discarded, and a NaN there would turn 0 * NaN into NaN gradients.
        xs_tm = xp.where(mask_tm[..., None], xs_tm, xp.zeros_like(xs_tm))
    ctx = Context(xp, adapter, params, layer_norm, eps, hidden, nonlinearity)
    seq = recurrence.Sequence(ctx, CELL_IMPLEMENTATIONS[cell], xs_tm, state, mask_tm)
    return _Call(seq, batch_first), hidden


def _public_state(state: tuple) -> Any:
    return state if len(state) == 2 else state[0]


def _stack_outputs(call: _Call, outputs: list, hidden: int) -> Any:
    xs, xp = call.seq.xs, call.seq.ctx.xp
    if outputs:
        hs = xp.stack(outputs)
    else:
        hs = xp.zeros((0, xs.shape[1], hidden), dtype=xs.dtype, device=device_of(xs))
    return _time_major(xp, hs, call.batch_first)


def rnn(
    xs: Array,
    state0: Array | tuple[Array, Array] | None,
    params: Mapping[str, Array],
    *,
    cell: str,
    layer_norm: bool = True,
    mask: Array | None = None,
    eps: float = 1e-5,
    batch_first: bool = False,
    nonlinearity: str = "tanh",
) -> tuple[Array, Array | tuple[Array, Array]]:
    """Run a (layer-normalized) tanh RNN, LSTM or GRU over a batch of sequences.

    The cells (Ba, Kiros & Hinton, 2016; ``sigma`` the logistic function,
    ``LN`` layer norm over the units of its argument, gate blocks in the
    order of :func:`rnn_params`):

    * ``"rnn"``, eq. 4: ``h_t = tanh(LN(x_t W_x + h_{t-1} W_h; gain, bias))``;
      plain: ``tanh(x_t W_x + h_{t-1} W_h + b)``.
    * ``"lstm"``, eqs. 20-22: ``(i, f, g, o) = LN(h_{t-1} W_h) + LN(x_t W_x) + b``,
      ``c_t = sigma(f) c_{t-1} + sigma(i) tanh(g)``,
      ``h_t = sigma(o) tanh(LN(c_t))``; the state carries ``c_t`` itself.
      Plain: the LNs are identities (``torch.nn.LSTM``).
    * ``"gru"``, eqs. 26-28: ``(r, z) = LN(h_{t-1} W_h) + LN(x_t W_x)``,
      ``n = tanh(LN(x_t W) + sigma(r) LN(h_{t-1} U))``,
      ``h_t = (1 - sigma(z)) h_{t-1} + sigma(z) n``. Plain: ``torch.nn.GRU``,
      ``n = tanh(x_t W + b_xn + r (h_{t-1} U + b_hn))``,
      ``h_t = (1 - z) n + z h_{t-1}``.

    Parameters
    ----------
    xs : array
        Inputs, shape ``(T, B, I)`` (time-major) or ``(B, T, I)`` with
        ``batch_first``; real floating dtype, any supported library.
    state0 : array, tuple of two arrays, or None
        Initial state: ``h0`` of shape ``(B, H)`` for ``"rnn"``/``"gru"``,
        ``(h0, c0)`` for ``"lstm"``; None means zeros, and so does None for
        one part of ``(h0, c0)``, e.g. ``(None, c0)``. xs's library, device, dtype.
    params : mapping of str to array
        As created by :func:`rnn_params` (exactly its keys for ``cell`` and
        ``layer_norm``); xs's library, device and dtype.
    cell : {"rnn", "lstm", "gru"}
    layer_norm : bool, default True
        Layer-normalized cell (True) or the standard one (False).
    mask : bool array, optional
        ``(T, B)`` (``(B, T)`` with ``batch_first``): True on real steps.
        On a False step the state is carried unchanged and the output is 0,
        so each sequence's final state is its state after its last real step.
    eps : float, default 1e-5
        Added to the variance in every layer norm; with ``layer_norm`` it
        must be a normal number of the dtype the statistics are computed in
        (float32 for float16/bfloat16 ``xs``), as for :func:`layer_norm`.
    batch_first : bool, default False
        Batch-major ``xs``, ``mask`` and outputs.
    nonlinearity : {"tanh", "relu"}, default "tanh"
        For ``cell="rnn"``: ``h_t = relu(...)`` instead of ``tanh(...)``
        (``torch.nn.RNN``'s option); the gated cells take "tanh" only.

    Returns
    -------
    hs : array
        Hidden state after every step, ``(T, B, H)`` (``(B, T, H)`` with
        ``batch_first``); zeros on masked steps.
    final_state : array or tuple of two arrays
        The state after the last step, structured like ``state0``.

    Raises
    ------
    TypeError
        Wrong types, libraries or dtypes of ``xs``, ``state0`` (including a
        wrong structure for the cell), ``params``, ``mask`` (must be bool),
        ``cell``, ``layer_norm``, ``eps``.
    ValueError
        Unknown ``cell``; ``xs`` not 3-D; a missing or unexpected key or a
        wrong shape in ``params``; a ``state0`` or ``mask`` shape that does
        not match ``xs``; devices that differ; ``eps`` <= 0, or (with
        ``layer_norm``) below the smallest normal number of the computation dtype.

    See Also
    --------
    rnn_backward, rnn_params, rnn_params_from_torch

    Notes
    -----
    Statistics are recomputed at every step and gains/biases are shared over
    time, so sequences of any length run with the same parameters; nothing
    per step is kept beyond the outputs. On PyTorch tensors the function is
    differentiable by autograd. With ``T = 0`` it returns an empty ``hs`` and
    the initial state.

    Examples
    --------
    >>> import numpy as np
    >>> import normcore
    >>> params = normcore.rnn_params("lstm", 3, 4, dtype="float64")
    >>> xs = np.random.default_rng(0).normal(size=(5, 2, 3))  # T=5, B=2, I=3
    >>> hs, (h, c) = normcore.rnn(xs, None, params, cell="lstm")
    >>> hs.shape, h.shape, c.shape
    ((5, 2, 4), (2, 4), (2, 4))
    >>> bool(np.array_equal(hs[-1], h))
    True
    """
    options = dict(cell=cell, layer_norm=layer_norm, eps=eps, batch_first=batch_first,
                   nonlinearity=nonlinearity)  # fmt: skip
    hs, final, _ = _forward(xs, state0, params, mask, options, record=False)
    return hs, final


class Recording(NamedTuple):
    """A forward call with the tape its backward needs (see :func:`recorded_rnn`)."""

    call: _Call
    hidden: int
    cell: str
    tape: recurrence.Tape


def recorded_rnn(xs, state0, params, *, mask=None, **options) -> tuple[Any, Any, Any]:
    """:func:`rnn`, also returning a :class:`Recording` for :func:`recorded_rnn_backward`.

    For a module's training call: the backward then walks the steps from
    what this forward kept (every step's activations, O(T * B * H) values)
    instead of running the forward again. The recording is None where there
    is nothing to keep (an adapter ran the call part by part, as dask does);
    the backward then recomputes, as :func:`rnn_backward` does.
    """
    return _forward(xs, state0, params, mask, options, record=True)


def _forward(xs, state0, params, mask, options, record) -> tuple[Any, Any, Any]:
    call, hidden = _prepare(xs, state0, params, mask=mask, **options)
    batch = 0 if options["batch_first"] else 1
    mapped = dispatch.map_batches(  # the parameters as checked and adopted: a dict of arrays
        call.seq.ctx.adapter, functools.partial(_rnn_part, **options),
        (xs, state0, call.seq.ctx.params, mask), in_axes=(batch, 0, None, batch),
        out_axes=(batch, 0),
    )  # fmt: skip
    if mapped is not NotImplemented:
        return *mapped, None
    return _run(call, hidden, options["cell"] if record else None)


def _run(call: _Call, hidden: int, record_cell: str | None = None) -> tuple[Any, Any, Any]:
    """``(hs, final_state, recording)`` of a checked call; a :class:`Recording` of
    the ``record_cell`` call when one is given, else None (nothing kept)."""
    record = record_cell is not None
    outputs, final, tape = recurrence.forward(call.seq, save=record)
    recording = Recording(call, hidden, record_cell, tape) if record else None
    return _stack_outputs(call, outputs, hidden), _public_state(final), recording


def _rnn_part(xs, state0, params, mask, **options) -> tuple[Any, Any]:
    """:func:`rnn` of one part of a batch (``Adapter.map_batches``; checked as a whole already)."""
    return _run(*_prepare(xs, state0, params, mask=mask, **options))[:2]


def _check_output_grads(call, hidden, dhs, dfinal_state, cell) -> tuple[Any, tuple | None]:
    xs = call.seq.xs
    check_arrays(xs, x_name="xs", exact_dtype=True, dhs=dhs)
    if dhs is None:
        raise TypeError("dhs must be an array, got None")
    dhs = _time_major(call.seq.ctx.xp, dhs, call.batch_first)
    expected = (xs.shape[0], xs.shape[1], hidden)
    if tuple(dhs.shape) != expected:
        raise ValueError(f"dhs must have the shape of hs {expected}, got {tuple(dhs.shape)}")
    return dhs, _check_state(xs, dfinal_state, cell, hidden, "dfinal_state")


def rnn_backward(
    dhs: Array,
    xs: Array,
    state0: Array | tuple[Array, Array] | None,
    params: Mapping[str, Array],
    *,
    cell: str,
    layer_norm: bool = True,
    mask: Array | None = None,
    eps: float = 1e-5,
    dfinal_state: Array | tuple[Array, Array] | None = None,
    batch_first: bool = False,
    nonlinearity: str = "tanh",
) -> RNNGradients:
    """Gradients of :func:`rnn` by backpropagation through time.

    Runs the forward again, keeping what each step's backward needs (the
    state entering the step and a few activations of the cell: memory linear
    in ``T``), then walks the steps backwards from those without recomputing
    the cells.

    Parameters
    ----------
    dhs : array
        Gradient of the loss with respect to ``hs``, same shape and dtype.
        Entries at masked steps are ignored (those outputs are constant 0).
    xs, state0, params, cell, layer_norm, mask, eps, batch_first, nonlinearity
        The arguments of the forward call.
    dfinal_state : array or tuple of two arrays, optional
        Gradient with respect to ``final_state`` (structured like it); None
        means zero, also for one part of the LSTM's ``(dh, dc)``.

    Returns
    -------
    RNNGradients
        Named tuple ``(dxs, dstate0, dparams)``: ``dxs`` like ``xs`` (zero at
        masked steps), ``dstate0`` structured like the state (also when
        ``state0`` was None), ``dparams`` a dict with every key of ``params``.

    Raises
    ------
    TypeError, ValueError
        As for :func:`rnn`, and when ``dhs`` or ``dfinal_state`` do not match
        the outputs.

    Examples
    --------
    >>> import numpy as np
    >>> import normcore
    >>> params = normcore.rnn_params("gru", 3, 4, dtype="float64")
    >>> xs = np.random.default_rng(0).normal(size=(5, 2, 3))
    >>> hs, h = normcore.rnn(xs, None, params, cell="gru")
    >>> grads = normcore.rnn_backward(np.ones_like(hs), xs, None, params, cell="gru")
    >>> grads.dxs.shape, grads.dstate0.shape, sorted(grads.dparams)
    ((5, 2, 3), (2, 4), ['W_h', 'W_x', 'bias_h', 'bias_hn', 'bias_x', 'bias_xn', 'gain_h', 'gain_hn', 'gain_x', 'gain_xn'])
    """  # noqa: E501
    options = dict(cell=cell, layer_norm=layer_norm, eps=eps, batch_first=batch_first,
                   nonlinearity=nonlinearity)  # fmt: skip
    call, hidden = _prepare(xs, state0, params, mask=mask, **options)
    checked = _check_output_grads(call, hidden, dhs, dfinal_state, cell)
    batch = 0 if batch_first else 1
    mapped = dispatch.map_batches(  # xs first: its chunks cut the batch
        call.seq.ctx.adapter, functools.partial(_rnn_backward_part, **options),
        (xs, dhs, state0, call.seq.ctx.params, mask, dfinal_state),
        in_axes=(batch, batch, 0, None, batch, 0), out_axes=RNNGradients(batch, 0, None),
    )  # fmt: skip
    return _run_backward(call, *checked, cell) if mapped is NotImplemented else mapped


def _rnn_backward_part(xs, dhs, state0, params, mask, dfinal_state, **options) -> RNNGradients:
    """:func:`rnn_backward` of one part of a batch (``Adapter.map_batches``)."""
    call, hidden = _prepare(xs, state0, params, mask=mask, **options)
    cell = options["cell"]
    return _run_backward(call, *_check_output_grads(call, hidden, dhs, dfinal_state, cell), cell)


def recorded_rnn_backward(recording: Recording, dhs: Any, dfinal_state: Any) -> RNNGradients:
    """:func:`rnn_backward` of a :func:`recorded_rnn` call, from its tape (left as it was)."""
    call, hidden, cell, tape = recording
    checked = _check_output_grads(call, hidden, dhs, dfinal_state, cell)
    return _run_backward(call, *checked, cell, tape)


def _run_backward(call, dhs, dfinal, cell, tape=None) -> RNNGradients:
    """The backward of a checked call; ``tape``: its forward's, if kept (else it reruns)."""
    seq, xp = call.seq, call.seq.ctx.xp
    params, batch_first = seq.ctx.params, call.batch_first
    dfinal = _zeros_for_none(dfinal, xp.zeros_like(seq.state0[0]), cell)
    if seq.xs.shape[0] == 0:
        dparams = {k: xp.zeros_like(v) for k, v in params.items()}
        dxs = _time_major(xp, xp.zeros_like(seq.xs), batch_first)
        return RNNGradients(dxs, _public_state(dfinal), dparams)
    dxs, dstate0, dparams = recurrence.backward(seq, dhs, dfinal, tape)
    return RNNGradients(_time_major(xp, dxs, batch_first), _public_state(dstate0), dparams)


class _Stack(NamedTuple):
    """A stacked call's options: what every layer and direction's call shares."""

    cell: str
    layer_norm: bool
    eps: float
    directions: int
    time_axis: int
    mask: Any
    nonlinearity: str

    def run(self, x, state0, params, direction, recordings=None) -> tuple[Any, Any]:
        """:func:`rnn` of one layer in one direction (the reverse on the reversed sequence).

        The reverse direction runs over the sequence and its mask reversed in
        time: its masked steps (a padded sequence's end, now first) carry the
        initial state unchanged, so each sequence starts at its own last step,
        as ``torch.nn``'s reverse direction of a ``PackedSequence`` does.
        With a list ``recordings``, the call's :class:`Recording` is appended.
        """
        flip = self._flip(direction)
        if recordings is None:
            hs, final = rnn(flip(x), state0, params, **self.options(flip))
        else:
            hs, final, recording = recorded_rnn(flip(x), state0, params, **self.options(flip))
            recordings.append(recording)
        return flip(hs), final

    def run_backward(self, dhs, x, state0, params, dfinal, direction, recording=None):
        """:func:`rnn_backward` of :meth:`run` (from its ``recording`` if there is one)."""
        flip = self._flip(direction)
        if recording is not None:
            g = recorded_rnn_backward(recording, flip(dhs), dfinal)
        else:
            g = rnn_backward(
                flip(dhs), flip(x), state0, params, dfinal_state=dfinal, **self.options(flip)
            )
        return RNNGradients(flip(g.dxs), g.dstate0, g.dparams)

    def _flip(self, direction: int) -> Any:
        """The sequences of ``direction`` in time order: reversed for the reverse one."""

        def flip(a: Any) -> Any:
            if direction == 0 or a is None:
                return a
            return namespace_of(a).flip(a, axis=self.time_axis)

        return flip

    def options(self, flip: Any = None) -> dict:
        return {
            "cell": self.cell,
            "layer_norm": self.layer_norm,
            "eps": self.eps,
            "mask": self.mask if flip is None else flip(self.mask),
            "batch_first": self.time_axis == 1,
            "nonlinearity": self.nonlinearity,
        }


def _stack(cell, layer_norm, eps, bidirectional, batch_first, mask, nonlinearity) -> _Stack:
    directions = 2 if bidirectional else 1
    return _Stack(cell, layer_norm, eps, directions, int(batch_first), mask, nonlinearity)


def _check_stack(xs: Any, states0: list, layer_params: list, stack: _Stack) -> None:
    """Every check :func:`rnn` makes of each layer's call, before a native kernel runs them."""
    _check_options(xs, stack.cell, stack.layer_norm, stack.eps, stack.time_axis == 1,
                   stack.nonlinearity)  # fmt: skip
    count, directions = len(layer_params), stack.directions
    if count == 0 or count % directions or len(states0) != count:
        raise ValueError(
            f"layer_params must hold a positive multiple of {directions} (the directions) "
            f"parameter dicts and states0 one state (or None) for each, got "
            f"{count} and {len(states0)}"
        )
    xs_tm = _time_major(namespace_of(xs), xs, stack.time_axis == 1)
    size, width = None, 0
    for k, (state0, params) in enumerate(zip(states0, layer_params, strict=True)):
        hidden = _check_params(xs, params, stack.cell, stack.layer_norm, size)
        _check_state(xs_tm, state0, stack.cell, hidden, "state0")
        width += hidden
        if k % directions == directions - 1:  # the next layer takes the directions' outputs
            size, width = width, 0


def stacked_rnn(
    xs: Any,
    states0: list,
    layer_params: list,
    *,
    cell: str,
    layer_norm: bool,
    eps: float,
    bidirectional: bool,
    batch_first: bool = False,
    mask: Any = None,
    nonlinearity: str = "tanh",
    between: Any = None,
    dropout: float = 0.0,
    keep_inputs: bool = False,
    recordings: list | None = None,
) -> tuple[Any, list]:
    """Several layers, each in one or both directions: :func:`rnn` once per layer and direction.

    The one place where layers and directions are composed (``normcore.torch``'s
    modules call it, autograd differentiating it; normcore's stacked modules
    call it and :func:`stacked_rnn_backward`). ``layer_params[k]`` and
    ``states0[k]`` (a state or None) belong to layer ``k // D``, direction
    ``k % D`` (``D`` = 2 with ``bidirectional``, the reverse direction second),
    torch's order. The reverse direction runs :func:`rnn` on the time-reversed
    sequence and reverses its outputs back; a layer's output is its directions'
    outputs concatenated on the last axis, and ``between`` (if given) maps it
    before the next layer (dropout). Returns ``(hs, finals)``, ``finals`` in the
    order of ``states0`` (and, with ``keep_inputs``, every layer's input third).
    With a list ``recordings`` (a module's training call, without ``between``),
    every layer and direction's :class:`Recording` is appended to it, in the
    order of ``states0``, for :func:`stacked_rnn_backward`.

    Plain cells without a mask go to the adapter's native kernel
    (:meth:`normcore.adapter.Adapter.recurrent`) where it has one; ``dropout``
    is then the probability that ``between`` applies, for a kernel that
    draws the dropout itself (0: ``between`` is not dropout, or not training).
    """
    stack = _stack(cell, layer_norm, eps, bidirectional, batch_first, mask, nonlinearity)
    xp = check_arrays(xs, x_name="xs")
    plain = not (layer_norm or keep_inputs or mask is not None or recordings is not None)
    if plain and (between is None or dropout):
        _check_stack(xs, states0, layer_params, stack)
        native = dispatch.recurrent(
            adapter_for(xs), xp, xs, states0, layer_params, cell=cell,
            nonlinearity=nonlinearity, bidirectional=stack.directions == 2,
            batch_first=stack.time_axis == 1,
            dropout=float(check_real(dropout, "dropout", 0.0, 1.0)),
        )  # fmt: skip
        if native is not NotImplemented:
            return native
    layers = len(layer_params) // stack.directions
    finals: list = []
    inputs: list = []
    layer_input = xs
    for layer in range(layers):
        if layer and between is not None:
            layer_input = between(layer_input)
        inputs.append(layer_input)
        outputs = []
        for direction in range(stack.directions):
            k = layer * stack.directions + direction
            hs, final = stack.run(layer_input, states0[k], layer_params[k], direction, recordings)
            outputs.append(hs)
            finals.append(final)
        layer_input = outputs[0] if len(outputs) == 1 else xp.concat(outputs, axis=-1)
    if keep_inputs:
        return layer_input, finals, inputs
    return layer_input, finals


def stacked_rnn_backward(
    dhs: Any,
    xs: Any,
    states0: list,
    layer_params: list,
    *,
    cell: str,
    layer_norm: bool,
    eps: float,
    bidirectional: bool,
    batch_first: bool = False,
    mask: Any = None,
    nonlinearity: str = "tanh",
    dfinals: list | None = None,
    recordings: list | None = None,
) -> tuple[Any, list, list]:
    """Gradients of :func:`stacked_rnn` (without ``between``): ``(dxs, dstates0, dparams)``.

    Runs the stack's forward once for every layer's input, then
    :func:`rnn_backward` for each layer and direction from the top layer down;
    a layer's input gradient, summed over its directions, is the output
    gradient of the layer below. ``dstates0``/``dparams`` are in the order of
    ``states0``; ``dfinals`` (None, or a list with None entries) in it too.
    ``recordings``: what ``stacked_rnn(..., recordings=[])`` appended for
    this call (its forward then does not run again, unless an entry is None).
    """
    stack = _stack(cell, layer_norm, eps, bidirectional, batch_first, mask, nonlinearity)
    count = len(layer_params)
    hidden = layer_params[-1]["W_h"].shape[0]  # the top layer's: dhs holds its outputs
    shape = tuple(getattr(dhs, "shape", ()))
    if len(shape) == 3 and shape[-1] != stack.directions * hidden:  # else: rnn_backward says
        raise ValueError(
            f"dhs must have the shape of hs, {stack.directions * hidden} features (directions x "
            f"hidden) along its last axis, got shape {shape}"
        )
    if recordings is None or any(r is None for r in recordings):
        recordings = [None] * count
        _, _, inputs = stacked_rnn(
            xs, states0, layer_params, cell=cell, layer_norm=layer_norm, eps=eps,
            bidirectional=bidirectional, batch_first=batch_first, mask=mask,
            nonlinearity=nonlinearity, keep_inputs=True,
        )  # fmt: skip
    else:  # every layer's input is in its recordings
        inputs = [None] * (count // stack.directions)
    dfinals = [None] * count if dfinals is None else dfinals
    dstates0: list = [None] * count
    dparams: list = [None] * count
    dout = dhs
    for layer in reversed(range(len(inputs))):
        dx_total = None
        for direction in range(stack.directions):
            k = layer * stack.directions + direction
            d = dout[..., direction * hidden : (direction + 1) * hidden]
            g = stack.run_backward(
                d, inputs[layer], states0[k], layer_params[k], dfinals[k], direction,
                recordings[k],
            )  # fmt: skip
            dstates0[k], dparams[k] = g.dstate0, g.dparams
            dx_total = g.dxs if dx_total is None else dx_total + g.dxs
        dout = dx_total
    return dout, dstates0, dparams

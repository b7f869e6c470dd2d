"""RNN, LSTM and GRU layers: objects that own the parameters of :func:`normcore.rnn`.

Thin stateful wrappers following the :class:`normcore.Module` pattern: the
parameters are exactly :func:`normcore.rnn_params`' arrays (same
names, attributes of the object), the forward is :func:`normcore.rnn` and the
backward computes :func:`normcore.rnn_backward`'s gradients: in training mode
from the tape the forward kept (``recorded_rnn``), after ``eval()`` by
running the forward again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._functional.rnn import (
    recorded_rnn,
    recorded_rnn_backward,
    rnn,
    rnn_backward,
    stacked_rnn,
    stacked_rnn_backward,
)
from .._functional.rnn_params import (
    layer_suffix,
    layer_torch_keys,
    rnn_params,
    rnn_params_from_torch,
    rnn_params_to_torch,
)
from .._plumbing.compat import to_device
from .._plumbing.validation import (
    check_bool,
    check_choice,
    check_eps,
    check_feature_count,
    check_keys,
    check_positive_int,
)
from .module import Module

__all__ = ["GRU", "LSTM", "RNN"]


class _Recurrent(Module):
    """Shared body of RNN, LSTM and GRU; subclasses set ``_cell``."""

    _accepts_low_precision = False  # normcore.rnn needs xs and params in one dtype

    _cell = ""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        layer_norm: bool = True,
        batch_first: bool = False,
        num_layers: int = 1,
        bidirectional: bool = False,
        eps: float = 1e-5,
        like: Any = None,
        device: Any = None,
        dtype: Any = None,
        seed: int = 0,
    ) -> None:
        input_size = check_positive_int(input_size, "input_size")
        hidden_size = check_positive_int(hidden_size, "hidden_size")
        layer_norm = check_bool(layer_norm, "layer_norm")
        batch_first = check_bool(batch_first, "batch_first")
        num_layers = check_positive_int(num_layers, "num_layers")
        bidirectional = check_bool(bidirectional, "bidirectional")
        eps = check_eps(eps)
        super().__init__(like=like, device=device, dtype=dtype)
        if layer_norm:  # the eps rule of every layer norm, before any parameter is made
            self._check_eps(eps)
        directions = 2 if bidirectional else 1
        # (layer, reverse) of every layer and direction, torch's order
        self._layers = [
            (k // directions, k % directions == 1) for k in range(num_layers * directions)
        ]
        params = {}
        for k, (layer, reverse) in enumerate(self._layers):
            size = input_size if layer == 0 else hidden_size * directions
            part = rnn_params(
                self._cell,
                size,
                hidden_size,
                layer_norm=layer_norm,
                like=like,
                device=device,
                dtype=dtype,
                seed=seed + k,  # layer 0's forward direction: the one-layer module's values
            )
            params.update({n + layer_suffix(layer, reverse): v for n, v in part.items()})
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.layer_norm = layer_norm
        self.batch_first = batch_first
        self.num_layers = num_layers
        self.bidirectional = bidirectional
        self.eps = eps
        self._parameter_names = tuple(params)
        self._base_names = tuple(part)  # rnn_params' names, each layer and direction's
        for name, value in params.items():
            setattr(self, name, value)
        self._dstate0: Any = None

    def _stack_options(self) -> dict[str, Any]:
        options = self._options()
        del options["cell"]
        return {"cell": self._cell, **options, "bidirectional": self.bidirectional}

    def _options(self) -> dict[str, Any]:
        return {
            "cell": self._cell,
            "layer_norm": self.layer_norm,
            "eps": self.eps,
            "batch_first": self.batch_first,
            "nonlinearity": getattr(self, "nonlinearity", "tanh"),
        }

    @property
    def _stacked(self) -> bool:
        return len(self._layers) > 1

    def _layer_params(self, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The parameters of every layer and direction, under :func:`normcore.rnn_params`' names."""
        names = self._base_names
        return [
            {n: params[n + layer_suffix(layer, reverse)] for n in names}
            for layer, reverse in self._layers
        ]

    def _states(self, states: Any, name: str) -> list:
        if states is None:
            return [None] * len(self._layers)
        if not isinstance(states, list) or len(states) != len(self._layers):
            got = (
                f"a list of length {len(states)}"
                if isinstance(states, list)
                else (type(states).__name__)
            )
            raise TypeError(
                f"{name} of a module with {self.num_layers} layer(s) and "
                f"{2 if self.bidirectional else 1} direction(s) must be None or a list of "
                f"{len(self._layers)} states (one per layer and direction, torch's order), "
                f"got {got}"
            )
        return states

    def __call__(self, xs: Any, state0: Any = None, mask: Any = None) -> tuple[Any, Any]:
        """Run the sequences ``xs``; return ``(hs, final_state)`` as :func:`normcore.rnn`.

        ``xs`` is ``(T, B, input_size)`` (``(B, T, input_size)`` with
        ``batch_first``); ``state0`` an array ``(B, H)`` (a tuple ``(h0, c0)``
        for the LSTM) or None for zeros; ``mask`` an optional bool ``(T, B)``
        (``(B, T)``) array, True on real steps. Remembers the call for
        :meth:`backward`: in training mode (the default) with every step's
        activations the backward needs (for the LSTM about ``11 * T * B * H``
        values per layer and direction, 15 with layer norm, as torch keeps for
        autograd), so that
        the backward does not run the forward again; after :meth:`eval`,
        only the inputs (the backward then recomputes the forward).

        Raises
        ------
        TypeError
            If ``xs`` is not a real floating-point array of the layer's
            library and dtype, and as :func:`normcore.rnn`.
        ValueError
            If ``xs`` is on another device, does not have ``input_size``
            features along its last axis, and as :func:`normcore.rnn`.
        """
        self._check_input(xs, "xs")
        if xs.ndim == 3:
            check_feature_count(xs, -1, self.input_size, "input_size", x_name="xs")
        params = self.parameters()
        if self._stacked:
            states0 = self._states(state0, "state0")
            recordings = [] if self.training else None
            hs, final = stacked_rnn(
                xs, states0, self._layer_params(params), mask=mask, recordings=recordings,
                **self._stack_options(),
            )  # fmt: skip
        elif self.training:
            hs, final, recording = recorded_rnn(xs, state0, params, mask=mask, **self._options())
            recordings = [recording]
        else:
            hs, final = rnn(xs, state0, params, mask=mask, **self._options())
            recordings = None
        # Replaced whole, never changed in place, and under the lock that a
        # backward's release of the tape takes: a backward in another thread sees
        # one call's inputs and recordings together, and never puts back an older one.
        with self._lock:
            self._saved = (xs, state0, params, mask, recordings)
        return hs, final

    def backward(self, dhs: Any, dfinal_state: Any = None) -> Any:
        """Return ``dxs`` for the last forward call; store the parameter and state gradients.

        ``grads()`` then returns the gradient of every parameter (by
        :func:`normcore.rnn_backward`, for the parameters as they were in the
        forward call) and :attr:`dstate0` the gradient of the initial state.

        Parameters
        ----------
        dhs : array
            Gradient of the loss with respect to ``hs``.
        dfinal_state : array or tuple of two arrays, optional
            Gradient with respect to ``final_state``; None means zero.
        """
        saved = self._require_saved()
        dxs = self._backward(saved, dhs, dfinal_state)
        with self._lock:  # the tape has served: released, unless a newer forward replaced it
            if self._saved is saved and saved[4] is not None:
                self._saved = (*saved[:4], None)
        return dxs

    def _backward(self, saved: tuple, dhs: Any, dfinal_state: Any) -> Any:
        xs, state0, params, mask, recordings = saved
        if self._stacked:
            dfinals = self._states(dfinal_state, "dfinal_state")
            dxs, dstates0, dparams = stacked_rnn_backward(
                dhs, xs, self._states(state0, "state0"), self._layer_params(params),
                mask=mask, dfinals=dfinals, recordings=recordings,
                **self._stack_options(),
            )  # fmt: skip
            grads = {}
            for (layer, reverse), part in zip(self._layers, dparams, strict=True):
                grads.update({n + layer_suffix(layer, reverse): g for n, g in part.items()})
            self._grads = {n: grads[n] for n in self._parameter_names}
            self._dstate0 = dstates0
            return dxs
        if recordings is not None and recordings[0] is not None:
            grads = recorded_rnn_backward(recordings[0], dhs, dfinal_state)
        else:
            grads = rnn_backward(
                dhs, xs, state0, params, mask=mask, dfinal_state=dfinal_state, **self._options()
            )
        self._grads = dict(grads.dparams)
        self._dstate0 = grads.dstate0
        return grads.dxs

    @property
    def dstate0(self) -> Any:
        """Gradient of the initial state from the last :meth:`backward` (None before).

        An array ``(B, H)``, or ``(dh0, dc0)`` for the LSTM; computed also when
        the forward's ``state0`` was None (zeros).
        """
        return self._dstate0

    def zero_grad(self) -> None:
        """Forget the stored parameter and state gradients."""
        super().zero_grad()
        self._dstate0 = None

    def to(self, device: Any) -> _Recurrent:
        """Move every array of the module to ``device`` (in place); return the module."""
        super().to(device)
        if self._dstate0 is not None:
            moved = tuple(to_device(d, device) for d in _as_tuple(self._dstate0))
            self._dstate0 = moved if isinstance(self._dstate0, tuple) else moved[0]
        return self

    # -- PyTorch interop ---------------------------------------------------------
    def to_torch_state_dict(self) -> dict[str, Any]:
        """Return the state under ``normcore.torch``'s keys (``torch.nn``'s without layer norm).

        See :func:`normcore.rnn_params_to_torch`; the values are new arrays of
        the module's library (convert with ``torch.as_tensor`` if needed).
        """
        state = {}
        for (layer, reverse), part in zip(
            self._layers, self._layer_params(self.parameters()), strict=True
        ):
            keys = layer_torch_keys(self._cell, self.layer_norm, True, layer, reverse)
            converted = rnn_params_to_torch(part, self._cell, self.layer_norm)
            state.update({keys[k]: v for k, v in converted.items()})
        return state

    def load_torch_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load a ``torch.nn`` (``layer_norm=False``) or ``normcore.torch`` module's state dict.

        Values are converted to the module's library, device and dtype;
        validation and atomicity as for :meth:`load_state_dict`.
        """
        layer_keys = [
            layer_torch_keys(self._cell, self.layer_norm, True, layer, reverse)
            for layer, reverse in self._layers
        ]
        if self._stacked:  # one layer: rnn_params_from_torch checks the keys itself
            expected = [key for keys in layer_keys for key in keys.values()]
            check_keys(state, expected, "state", f"of a {self!r}")
        params = {}
        for (layer, reverse), keys in zip(self._layers, layer_keys, strict=True):
            part = {k: state[t] for k, t in keys.items()} if self._stacked else state
            converted = rnn_params_from_torch(part, self._cell, self.layer_norm)
            params.update({n + layer_suffix(layer, reverse): v for n, v in converted.items()})
        self.load_state_dict(params)

    def __repr__(self) -> str:
        extra = "".join(
            f", {name}={value!r}"
            for name, value, default in (
                ("num_layers", self.num_layers, 1),
                ("bidirectional", self.bidirectional, False),
                ("nonlinearity", getattr(self, "nonlinearity", "tanh"), "tanh"),
            )
            if value != default
        )
        return (
            f"{type(self).__name__}({self.input_size}, {self.hidden_size}, "
            f"layer_norm={self.layer_norm}, batch_first={self.batch_first}{extra}; "
            f"{self._placement()})"
        )


def _as_tuple(state: Any) -> tuple:
    return state if isinstance(state, tuple) else (state,)


_DOC = """{title}

    Calling the layer runs :func:`normcore.rnn` with ``cell="{cell}"`` and its
    parameters; :meth:`backward` computes :func:`normcore.rnn_backward`'s
    gradients (in training mode from what the call kept, without running the
    forward again), returns the input gradient ``dxs``, stores the parameter
    gradients (``grads()``) and the initial state's (:attr:`dstate0`).

    Parameters
    ----------
    input_size, hidden_size : int
        Features per input step (``I``) and hidden units (``H``).
    layer_norm : bool, default True
        Layer-normalized cell (Ba, Kiros & Hinton, 2016) or the standard one
        ({torch_name} of ``torch.nn``).
    batch_first : bool, default False
        Inputs, masks and outputs are ``(B, T, ...)`` instead of ``(T, B, ...)``.
    num_layers : int, default 1
        Stacked layers; layer ``k > 0`` takes layer ``k - 1``'s outputs.
    bidirectional : bool, default False
        A second direction per layer over the reversed sequence; outputs are
        the two directions concatenated (``2 * H`` features). Not with a mask.
    eps : float, default 1e-5
        Added to the variance in every layer norm; with ``layer_norm``, a
        normal number of the parameters' dtype (float32 for float16/bfloat16).
    like, device, dtype
        Library, device and dtype of the parameters (see :class:`normcore.Module`);
        NumPy float32 by default.
    seed : int, default 0
        Seed of the initial values (see :func:`normcore.rnn_params`); layer and
        direction ``k`` (torch's order) uses ``seed + k``.
{extra}
    Attributes
    ----------
    W_x, W_h, ...
        The parameters, named as by :func:`normcore.rnn_params` for ``"{cell}"``
        (also the keys of ``parameters()`` and ``state_dict()``); layers and
        directions other than layer 0's forward add torch's suffix
        (``W_x_l1``, ``W_x_l0_reverse``).

    Notes
    -----
    With more than one layer or direction, ``state0``, the final state,
    ``dfinal_state`` and :attr:`dstate0` are lists with one state per layer
    and direction, in ``torch.nn``'s order (layer 0 forward, layer 0
    reverse, layer 1 forward, ...); each layer and direction is one
    :func:`normcore.rnn` call (its backward one :func:`normcore.rnn_backward`).

    Raises
    ------
    TypeError, ValueError
        As :func:`normcore.rnn_params`, and for a non-bool ``batch_first`` or
        an ``eps`` that is not a finite number > 0.

    See Also
    --------
    rnn, rnn_backward, rnn_params

    Examples
    --------
    >>> import numpy as np
    >>> import normcore
    >>> layer = normcore.{name}(3, 4, dtype="float64")
    >>> xs = np.random.default_rng(0).normal(size=(5, 2, 3))  # T=5, B=2, I=3
    >>> hs, final = layer(xs)
    >>> hs.shape
    (5, 2, 4)
    >>> dxs = layer.backward(np.ones_like(hs))
    >>> dxs.shape, sorted(layer.grads()) == sorted(layer.parameters())
    ((5, 2, 3), True)
    {state_example}
    """


class RNN(_Recurrent):
    _cell = "rnn"

    def __init__(self, input_size: int, hidden_size: int, *, nonlinearity: str = "tanh",
                 **kwargs: Any) -> None:  # fmt: skip
        self.nonlinearity = check_choice(nonlinearity, ("tanh", "relu"), "nonlinearity")
        super().__init__(input_size, hidden_size, **kwargs)

    __doc__ = _DOC.format(
        title="Tanh RNN layer, layer-normalized by default (Ba, Kiros & Hinton, eq. 4).",
        cell="rnn",
        name="RNN",
        torch_name="``RNN``",
        state_example=">>> layer.dstate0.shape\n    (2, 4)",
        extra="    nonlinearity : {'tanh', 'relu'}, default 'tanh'\n"
        "        ``relu`` instead of ``tanh`` (keyword only; ``torch.nn.RNN``'s option).\n",
    )


class LSTM(_Recurrent):
    _cell = "lstm"
    __doc__ = _DOC.format(
        title="LSTM layer, layer-normalized by default (Ba, Kiros & Hinton, eqs 20-22).",
        cell="lstm",
        name="LSTM",
        torch_name="``LSTM``",
        state_example=">>> [d.shape for d in layer.dstate0]  # (dh0, dc0)\n    [(2, 4), (2, 4)]",
        extra="",
    )


class GRU(_Recurrent):
    _cell = "gru"
    __doc__ = _DOC.format(
        title="GRU layer, layer-normalized by default (Ba, Kiros & Hinton, eqs 26-28).",
        cell="gru",
        name="GRU",
        torch_name="``GRU``",
        state_example=">>> layer.dstate0.shape\n    (2, 4)",
        extra="",
    )

"""PyTorch recurrent modules: drop-ins for torch.nn.RNN/LSTM/GRU, optionally layer-normalized.

Any number of layers, one or two directions, with or without biases, dropout
between layers; ``tanh`` or ``relu`` for the RNN. Each layer and direction is one
:func:`normcore.rnn` call, composed by ``normcore._functional.rnn.stacked_rnn``
(autograd differentiates it). With ``layer_norm=False`` (the default) the
modules are interchangeable with their ``torch.nn`` namesakes: constructor,
``state_dict`` keys (``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``,
``bias_hh_l0``, ``weight_ih_l0_reverse``, ..., ``weight_ih_l1``, ...),
``forward(input, hx)`` and its return structure (``PackedSequence`` included,
in one direction), and on float32/float64 CPU tensors they run torch's own
kernels (the torch adapter's ``recurrent`` hook). They are not subclasses of
``torch.nn.RNNBase``: dynamo refuses to compile any of those. With ``layer_norm=True`` the
cells are Ba et al.'s layer-normalized ones and the layer norms' gains and
biases are extra parameters named ``ln_<name>`` after :func:`normcore.rnn_params`
(``ln_gain_x``, ...), with torch's suffix (``ln_gain_x_l1``,
``ln_gain_x_l0_reverse``) everywhere but in layer 0's forward direction.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch

from normcore._functional.rnn import stacked_rnn
from normcore._functional.rnn_params import (
    layer_torch_keys,
    params_from_torch_layout,
    torch_keys,
    torch_shapes,
)
from normcore._plumbing.compat import resolve_device
from normcore._plumbing.validation import (
    check_bool,
    check_choice,
    check_eps,
    check_positive_int,
    check_real,
)

from ._checks import check_eps_for

__all__ = ["GRU", "LSTM", "RNN"]


class _Recurrent(torch.nn.Module):
    """Shared body of the three modules; subclasses set ``_cell``."""

    _cell = ""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int,
        bias: bool,
        batch_first: bool,
        dropout: float,
        bidirectional: bool,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
        layer_norm: bool,
        eps: float,
    ) -> None:
        super().__init__()
        self.input_size = check_positive_int(input_size, "input_size")
        self.hidden_size = check_positive_int(hidden_size, "hidden_size")
        self.num_layers = check_positive_int(num_layers, "num_layers")
        self.bias = check_bool(bias, "bias")
        self.batch_first = check_bool(batch_first, "batch_first")
        self.dropout = float(check_real(dropout, "dropout", 0.0, 1.0))
        self.bidirectional = check_bool(bidirectional, "bidirectional")
        self.layer_norm = check_bool(layer_norm, "layer_norm")
        # The eps rule applies where eps is used: in the layer norms.
        self.eps = check_eps_for(eps, dtype) if self.layer_norm else check_eps(eps)
        directions = 2 if self.bidirectional else 1
        # torch.nn raises RuntimeError for an unknown device; normcore a ValueError naming it
        factory = {"device": resolve_device(torch, device), "dtype": dtype}
        self._keys = []  # per (layer, direction), torch's order: {layout key: attribute}
        self._shapes = {}  # {attribute: shape}: what forward checks parameters against
        for layer in range(self.num_layers):
            size = self.input_size if layer == 0 else self.hidden_size * directions
            shapes = torch_shapes(self._cell, size, self.hidden_size, layer_norm)
            for reverse in (False, True)[:directions]:
                keys = layer_torch_keys(self._cell, layer_norm, self.bias, layer, reverse)
                for key, name in keys.items():
                    empty = torch.empty(shapes[key], **factory)
                    self.register_parameter(name, torch.nn.Parameter(empty))
                    self._shapes[name] = tuple(shapes[key])
                self._keys.append(keys)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialize as ``torch.nn`` does, ``U(-1/sqrt(H), 1/sqrt(H))``; LN gains 1, biases 0."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for name, p in self.named_parameters():
            if name.startswith("ln_gain"):
                torch.nn.init.ones_(p)
            elif name.startswith("ln_bias"):
                torch.nn.init.zeros_(p)
            else:
                torch.nn.init.uniform_(p, -bound, bound)

    def _params(self) -> list[dict[str, torch.Tensor]]:
        """normcore params of every layer and direction (views of the parameters)."""
        result = []
        for keys in self._keys:
            state = {key: getattr(self, name) for key, name in keys.items()}
            for key in torch_keys(self._cell, self.layer_norm):
                if key not in state:  # bias=False: a bias that stays zero
                    w = state["weight_ih_l0"]
                    state[key] = torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
            result.append(params_from_torch_layout(state, self._cell, self.layer_norm, copy=False))
        return result

    def forward(self, input: torch.Tensor, hx: Any = None) -> tuple[torch.Tensor, Any]:
        """Run the sequences; return ``(output, h_n)`` (``(output, (h_n, c_n))`` for the LSTM).

        Parameters
        ----------
        input : torch.Tensor or torch.nn.utils.rnn.PackedSequence
            ``(L, N, input_size)`` (``(N, L, input_size)`` with ``batch_first``),
            ``(L, input_size)`` for one unbatched sequence, or sequences of
            different lengths packed by ``torch.nn.utils.rnn.pack_sequence``
            (one direction only; they run as padded sequences with a mask).
        hx : torch.Tensor or tuple of two, optional
            Initial state ``(D * num_layers, N, hidden_size)``
            (``(D * num_layers, hidden_size)`` unbatched; ``D`` is 2 when
            bidirectional, else 1); ``(h_0, c_0)`` for the LSTM. None: zeros.

        Returns
        -------
        output : torch.Tensor or torch.nn.utils.rnn.PackedSequence
            The last layer's outputs, ``(L, N, D * hidden_size)`` (the
            directions concatenated; batch-first or unbatched like ``input``);
            packed like ``input`` if it is packed.
        h_n : torch.Tensor or tuple of two
            The final states, shaped like ``hx``.

        Raises
        ------
        TypeError
            For a wrong ``hx`` structure.
        ValueError
            For an input that is not 2-D or 3-D, an ``hx`` whose first axis is
            not ``D * num_layers``, a ``PackedSequence`` with
            ``bidirectional=True``, and everything :func:`normcore.rnn` rejects.
        """
        name = type(self).__name__
        packed, mask = None, None
        if isinstance(input, torch.nn.utils.rnn.PackedSequence):
            packed = input
            input, mask = self._unpack(packed)
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
        if input.dim() not in (2, 3):
            raise ValueError(f"{name}: expected input to be 2D or 3D, got {input.dim()}D instead")
        if input.shape[-1] != self.input_size:
            raise ValueError(
                f"{name}: input.size(-1) must be input_size={self.input_size}, "
                f"got {input.shape[-1]} (input shape {tuple(input.shape)})"
            )
        if input.dtype != self.weight_ih_l0.dtype:
            raise TypeError(
                f"{name}: input must have the parameters' dtype {self.weight_ih_l0.dtype}, "
                f"got {input.dtype} (convert one with .to())"
            )
        if input.device != self.weight_ih_l0.device:
            raise ValueError(
                f"{name}: input is on device {input.device} but the parameters (weight_ih_l0) "
                f"are on device {self.weight_ih_l0.device}; move one of them with .to()"
            )
        self._check_parameters(name)
        batched = input.dim() == 3
        batch = input.shape[0 if self.batch_first else 1] if batched else None
        states0 = [None] * len(self._keys) if hx is None else self._states0(hx, batch, input)
        if not batched:
            input = input.unsqueeze(0 if self.batch_first else 1)
        between = None
        if self.dropout and self.training:

            def between(a: torch.Tensor) -> torch.Tensor:
                return torch.nn.functional.dropout(a, self.dropout, training=True)

        hs, finals = stacked_rnn(
            input,
            states0,
            self._params(),
            cell=self._cell,
            layer_norm=self.layer_norm,
            eps=self.eps,
            nonlinearity=getattr(self, "nonlinearity", "tanh"),
            bidirectional=self.bidirectional,
            batch_first=self.batch_first,
            mask=mask,
            between=between,
            dropout=self.dropout if between is not None else 0.0,
        )
        if packed is not None:
            hs = self._pack(hs, packed, mask)
        parts = [f if isinstance(f, tuple) else (f,) for f in finals]
        stacked = tuple(torch.stack(part) for part in zip(*parts, strict=True))
        if not batched:
            hs = hs.squeeze(0 if self.batch_first else 1)
            stacked = tuple(f.squeeze(1) for f in stacked)
        return hs, stacked if self._cell == "lstm" else stacked[0]

    def _check_parameters(self, name: str) -> None:
        """Every parameter a tensor of its constructed shape, with weight_ih_l0's dtype and device.

        A parameter replaced by one of another shape, dtype or device is
        reported under its own name and in torch's layout, before normcore's
        checks (which would name their internal ``params['W_x']``) run.
        """
        first = self.weight_ih_l0
        # (a module pickled before the shapes were recorded is checked by normcore alone)
        for attribute, shape in getattr(self, "_shapes", {}).items():
            p = getattr(self, attribute)
            if not isinstance(p, torch.Tensor):
                raise TypeError(
                    f"{name}: {attribute} must be a torch.Tensor, got {type(p).__name__}"
                )
            if tuple(p.shape) != shape:
                raise ValueError(
                    f"{name}: {attribute} must have shape {shape} for input_size="
                    f"{self.input_size}, hidden_size={self.hidden_size}, got {tuple(p.shape)}"
                )
            if p.dtype != first.dtype:
                raise TypeError(
                    f"{name}: {attribute} must have weight_ih_l0's dtype {first.dtype}, got "
                    f"{p.dtype} (convert the module with .to(dtype))"
                )
            if p.device != first.device:
                raise ValueError(
                    f"{name}: {attribute} is on device {p.device} but weight_ih_l0 is on "
                    f"{first.device}; move the module with .to(device)"
                )

    def _unpack(self, packed: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The padded sequences of ``packed`` in the caller's order, and their mask.

        The padded steps are masked (their state carried, their output
        dropped), so each sequence's final state is that after its last step,
        as torch.nn's; the reverse direction, run on the sequences and mask
        reversed, starts at each sequence's own last step.
        """
        padded, lengths = torch.nn.utils.rnn.pad_packed_sequence(
            packed, batch_first=self.batch_first
        )
        steps = torch.arange(padded.shape[1 if self.batch_first else 0])
        mask = steps[:, None] < lengths[None, :]  # (T, N)
        mask = mask.T if self.batch_first else mask
        return padded, mask.to(padded.device)

    def _pack(self, hs: torch.Tensor, packed: Any, mask: torch.Tensor) -> Any:
        """``hs`` (padded, in the caller's order) packed as ``packed`` is: same sizes and order."""
        utils = torch.nn.utils.rnn
        time_major = hs.transpose(0, 1) if self.batch_first else hs
        lengths = (mask.T if self.batch_first else mask).sum(dim=0).cpu()
        if packed.sorted_indices is not None:
            time_major = time_major.index_select(1, packed.sorted_indices)
            lengths = lengths[packed.sorted_indices.cpu()]
        data = utils.pack_padded_sequence(time_major, lengths, enforce_sorted=True).data
        return utils.PackedSequence(
            data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices
        )

    def _states0(self, hx: Any, batch: int | None, input: torch.Tensor) -> list:
        """Split ``hx`` into the state of every layer and direction, checked with torch's names.

        ``batch`` is the input's batch size (None: an unbatched input). Every
        check :func:`normcore.rnn` makes of its ``state0`` is made here first,
        so its messages (``state0.h``, ``(batch, hidden)``) are never seen.
        """
        lstm = self._cell == "lstm"
        parts = hx if lstm and isinstance(hx, tuple | list) and len(hx) == 2 else None
        if lstm and parts is None:
            got = type(hx).__name__
            if isinstance(hx, tuple | list):
                got = f"a {got} of length {len(hx)}"
            raise TypeError(f"hx for LSTM must be a tuple (h_0, c_0), got {got}")
        if not lstm and not isinstance(hx, torch.Tensor):
            raise TypeError(f"hx must be a torch.Tensor, got {type(hx).__name__}")
        count = len(self._keys)
        if batch is None:
            layout, expected = "(D * num_layers, hidden_size)", (count, self.hidden_size)
        else:
            layout = "(D * num_layers, batch, hidden_size)"
            expected = (count, batch, self.hidden_size)
        weight = self.weight_ih_l0
        states = []
        for label, part in zip(("h_0", "c_0") if lstm else ("hx",), parts or (hx,), strict=True):
            if not isinstance(part, torch.Tensor):
                raise TypeError(f"{label} must be a torch.Tensor, got {type(part).__name__}")
            if tuple(part.shape) != expected:
                raise ValueError(
                    f"{label} must have shape {layout} with D * num_layers = {count}: "
                    f"{expected}, got {tuple(part.shape)}"
                )
            if part.dtype != weight.dtype:
                raise TypeError(
                    f"{label} must have the parameters' dtype {weight.dtype} (weight_ih_l0's), "
                    f"got {part.dtype}"
                )
            if part.device != input.device:
                raise ValueError(
                    f"{label} is on device {part.device} but input is on device "
                    f"{input.device}; move one of them with .to()"
                )
            states.append(part if batch is not None else part.unsqueeze(1))
        return [tuple(s[k] for s in states) if lstm else states[0][k] for k in range(count)]

    def flatten_parameters(self) -> None:
        """Do nothing: there is no cuDNN weight buffer to compact (kept for torch.nn code)."""

    def extra_repr(self) -> str:
        text = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            text += f", num_layers={self.num_layers}"
        if not self.bias:
            text += ", bias=False"
        if self.dropout:
            text += f", dropout={self.dropout}"
        if self.bidirectional:
            text += ", bidirectional=True"
        return f"{text}, batch_first={self.batch_first}, layer_norm={self.layer_norm}"


_DOC = """{title}

    Parameters
    ----------
    input_size, hidden_size : int
    num_layers : int, default 1
        Stacked layers; layer ``k > 0`` takes layer ``k - 1``'s outputs.{extra}
    bias : bool, default True
        False: no ``bias_ih``/``bias_hh`` parameters (the layer norms keep
        their own biases).
    batch_first : bool, default False
        ``(N, L, ...)`` inputs and outputs instead of ``(L, N, ...)``.
    dropout : float, default 0
        Dropout probability on the outputs of every layer but the last, in
        training mode.
    bidirectional : bool, default False
        A second direction per layer, over the reversed sequence; outputs
        are the two directions concatenated.{proj}
    device, dtype : optional
        Of the parameters.
    layer_norm : bool, default False
        Layer-normalized cell (keyword only); adds the ``ln_`` parameters.
    eps : float, default 1e-5
        Added to the variance in every layer norm (keyword only).

    Examples
    --------
    >>> import torch
    >>> import normcore
    >>> ours = normcore.torch.{name}(3, 4)
    >>> ours.load_state_dict(torch.nn.{name}(3, 4).state_dict())
    <All keys matched successfully>
    >>> output, {state} = ours(torch.randn(5, 2, 3))
    >>> output.shape
    torch.Size([5, 2, 4])
    >>> list(normcore.torch.{name}(3, 4, layer_norm=True).state_dict())
    {keys}
    """


class RNN(_Recurrent):
    __doc__ = _DOC.format(
        title="Drop-in for ``torch.nn.RNN``, computed by :func:`normcore.rnn`.",
        name="RNN",
        extra="\n    nonlinearity : {'tanh', 'relu'}, default 'tanh'\n"
        "        The cell's nonlinearity (with layer norm too: ``relu(LN(a))``).",
        proj="",
        state="h_n",
        keys="['weight_ih_l0', 'weight_hh_l0', 'ln_gain', 'ln_bias']",
    )
    _cell = "rnn"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        layer_norm: bool = False,
        eps: float = 1e-5,
    ) -> None:
        self.nonlinearity = check_choice(nonlinearity, ("tanh", "relu"), "nonlinearity")
        super().__init__(
            input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
            device, dtype, layer_norm, eps,
        )  # fmt: skip


class _Gated(_Recurrent):
    # torch.nn's positional order: proj_size comes before device and dtype.
    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        layer_norm: bool = False,
        eps: float = 1e-5,
    ) -> None:
        if isinstance(proj_size, bool) or not isinstance(proj_size, numbers.Integral):
            raise TypeError(f"proj_size must be an int, got {type(proj_size).__name__}")
        if proj_size != 0:
            raise ValueError(
                f"normcore.torch.{type(self).__name__} supports proj_size=0 only "
                f"(no projection), got {proj_size}"
            )
        super().__init__(
            input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
            device, dtype, layer_norm, eps,
        )  # fmt: skip
        self.proj_size = 0


class LSTM(_Gated):
    __doc__ = _DOC.format(
        title="Drop-in for ``torch.nn.LSTM``, computed by :func:`normcore.rnn`.",
        name="LSTM",
        extra="",
        proj="\n    proj_size : int, default 0\n        Only 0 (no projection).",
        state="(h_n, c_n)",
        keys="['weight_ih_l0', 'weight_hh_l0', 'bias_ih_l0', 'bias_hh_l0', 'ln_gain_x', "
        "'ln_bias_x', 'ln_gain_h', 'ln_bias_h', 'ln_gain_c', 'ln_bias_c']",
    )
    _cell = "lstm"


class GRU(_Gated):
    __doc__ = _DOC.format(
        title="Drop-in for ``torch.nn.GRU``, computed by :func:`normcore.rnn`.",
        name="GRU",
        extra="",
        proj="\n    proj_size : int, default 0\n        Only 0 (no projection).",
        state="h_n",
        keys="['weight_ih_l0', 'weight_hh_l0', 'ln_gain_x', 'ln_bias_x', 'ln_gain_h', "
        "'ln_bias_h', 'ln_gain_xn', 'ln_bias_xn', 'ln_gain_hn', 'ln_bias_hn']",
    )
    _cell = "gru"

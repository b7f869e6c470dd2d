"""Parameters of the recurrent cells: names and shapes, initialization, torch conversion.

Weights multiply row vectors from the right (a step computes ``x_t @ W_x`` and
``h_{t-1} @ W_h``); their ``G`` blocks of ``H`` columns are the gates in
PyTorch's order. The key set of each cell, with and without layer norm, is
documented in :func:`rnn_params` and in ``docs/recurrent.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .._plumbing.compat import namespace_of, resolve_creation
from .._plumbing.validation import (
    check_bool,
    check_choice,
    check_named_arrays,
    check_positive_int,
    check_shapes,
    matrix_size,
)
from .._reference.cells import CELL_IMPLEMENTATIONS
from ..typing import Array, Device, DType

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "CELLS",
    "GATES",
    "layer_suffix",
    "layer_torch_keys",
    "param_names",
    "param_shapes",
    "params_from_torch_layout",
    "rnn_params",
    "rnn_params_from_torch",
    "rnn_params_to_torch",
    "torch_keys",
    "torch_names",
    "torch_shapes",
]

CELLS = tuple(CELL_IMPLEMENTATIONS)
GATES = {cell: implementation.gates for cell, implementation in CELL_IMPLEMENTATIONS.items()}
TORCH_KEYS = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")


def param_shapes(cell: str, input_size: int, hidden_size: int, layer_norm: bool) -> dict:
    """Return ``{name: shape}`` of the parameters of ``cell`` (see the module docstring)."""
    i, h = input_size, hidden_size
    g = GATES[cell] * h
    shapes: dict[str, tuple[int, ...]] = {"W_x": (i, g), "W_h": (h, g)}
    if cell == "rnn":
        shapes.update({"gain": (h,), "bias": (h,)} if layer_norm else {"b": (h,)})
    elif cell == "lstm":
        shapes["b"] = (g,)
        if layer_norm:
            shapes.update(_ln_pairs(("x", "h"), g) | _ln_pairs(("c",), h))
    elif layer_norm:
        shapes.update(_ln_pairs(("x", "h"), 2 * h) | _ln_pairs(("xn", "hn"), h))
    else:
        shapes.update({"b_x": (g,), "b_h": (g,)})
    return shapes


def param_names(cell: str, layer_norm: bool) -> tuple[str, ...]:
    """Return the names of the parameters of ``cell`` (they do not depend on the sizes)."""
    return tuple(param_shapes(cell, 1, 1, layer_norm))


def torch_shapes(cell: str, input_size: int, hidden_size: int, layer_norm: bool) -> dict:
    """Return ``{key: shape}`` of the torch-layout state of ``cell`` (see :func:`torch_keys`)."""
    ours = param_shapes(cell, input_size, hidden_size, layer_norm)
    gates = ours["W_x"][1]
    shapes = {
        "weight_ih_l0": (gates, input_size),
        "weight_hh_l0": (gates, hidden_size),
        "bias_ih_l0": (gates,),
        "bias_hh_l0": (gates,),
    }
    shapes.update({t: ours[k] for k, t in torch_names(cell, layer_norm).items()})
    return {key: shapes[key] for key in torch_keys(cell, layer_norm)}


def _ln_pairs(suffixes: tuple[str, ...], size: int) -> dict:
    return {f"{kind}_{s}": (size,) for s in suffixes for kind in ("gain", "bias")}


def _orthogonal(rng: np.random.Generator, n: int) -> np.ndarray:
    import numpy as np

    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))  # the sign fix makes q uniformly (Haar) distributed


def _initial_values(cell: str, shapes: Mapping, seed: int) -> dict[str, np.ndarray]:
    # NumPy draws the values for every library (imported here: not at import normcore).
    import numpy as np

    rng = np.random.default_rng(seed)
    i, gh = shapes["W_x"]
    h = shapes["W_h"][0]
    gates = gh // h
    limit = np.sqrt(6.0 / (i + h))  # Glorot uniform with fan_in = I, fan_out = H per gate
    values = {
        "W_x": rng.uniform(-limit, limit, size=(i, gh)),
        "W_h": np.concatenate([_orthogonal(rng, h) for _ in range(gates)], axis=1),
    }
    for name, shape in shapes.items():
        if name not in values:
            values[name] = np.full(shape, 1.0 if name.startswith("gain") else 0.0)
    if cell == "lstm":
        values["b"][h : 2 * h] = 1.0  # forget gate: remember by default
    return values


def rnn_params(
    cell: str,
    input_size: int,
    hidden_size: int,
    *,
    layer_norm: bool = True,
    like: Any = None,
    device: Device = None,
    dtype: DType | str | None = None,
    seed: int = 0,
) -> dict[str, Array]:
    """Create initialized parameters for :func:`normcore.rnn`.

    Parameters
    ----------
    cell : {"rnn", "lstm", "gru"}
        The recurrent cell: tanh RNN (eq. 4 of Ba et al.), LSTM (eqs. 20-22) or
        GRU (eqs. 26-28; PyTorch's GRU when ``layer_norm=False``).
    input_size, hidden_size : int
        Features per input step (``I``) and hidden units (``H``), both >= 1.
    layer_norm : bool, default True
        Create the layer-normalized cell's parameters (gains and LN biases).
    like : array, array library or None
        Library and device of the arrays (an array, ``numpy``, ``torch``,
        ``cupy``, ``array_api_strict``, ...); None means NumPy.
    device : optional
        Device, as the library names it; default ``like``'s or the library's.
    dtype : dtype or str, optional
        Real floating dtype; default float32.
    seed : int, default 0
        Seed of the NumPy generator that draws the initial values; they are
        drawn in float64 and converted, so every library gets the same values.

    Returns
    -------
    dict of str to array
        A new mutable mapping; keys and shapes per cell:

        * ``rnn``: ``W_x (I, H)``, ``W_h (H, H)`` and ``b (H)``; with layer
          norm ``gain (H)``, ``bias (H)`` instead of ``b``.
        * ``lstm``: ``W_x (I, 4H)``, ``W_h (H, 4H)``, ``b (4H)``; gate blocks
          ``(i, f, g, o)``. Layer norm adds ``gain_x``, ``bias_x``,
          ``gain_h``, ``bias_h`` (4H) and ``gain_c``, ``bias_c`` (H).
        * ``gru``: ``W_x (I, 3H)``, ``W_h (H, 3H)``, blocks ``(r, z, n)``;
          plain: ``b_x``, ``b_h`` (3H); layer norm instead: ``gain_x``,
          ``bias_x``, ``gain_h``, ``bias_h`` (2H, the gates) and ``gain_xn``,
          ``bias_xn``, ``gain_hn``, ``bias_hn`` (H, the candidate).

        Initialization: ``W_x`` Glorot-uniform, ``U(-a, a)`` with
        ``a = sqrt(6 / (I + H))``; each ``H x H`` gate block of ``W_h`` a
        random orthogonal matrix; gains 1; every bias 0 except the LSTM's
        forget-gate block of ``b``, which is 1.

    Raises
    ------
    TypeError
        If ``cell`` is not a str, a size or ``seed`` not an int, ``layer_norm``
        not a bool, ``like`` not an array library or ``dtype`` not floating.
    ValueError
        If ``cell`` is unknown or a size is < 1.

    Examples
    --------
    >>> import normcore
    >>> params = normcore.rnn_params("lstm", 3, 2, dtype="float64")
    >>> {name: value.shape for name, value in params.items()}  # doctest: +NORMALIZE_WHITESPACE
    {'W_x': (3, 8), 'W_h': (2, 8), 'b': (8,), 'gain_x': (8,), 'bias_x': (8,),
     'gain_h': (8,), 'bias_h': (8,), 'gain_c': (2,), 'bias_c': (2,)}
    >>> params["b"].tolist()
    [0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    """
    check_choice(cell, CELLS, "cell")
    input_size = check_positive_int(input_size, "input_size")
    hidden_size = check_positive_int(hidden_size, "hidden_size")
    check_bool(layer_norm, "layer_norm")
    seed = check_positive_int(seed, "seed", minimum=0)
    xp, device, dtype = resolve_creation(like, device, dtype)
    values = _initial_values(cell, param_shapes(cell, input_size, hidden_size, layer_norm), seed)
    return {name: xp.asarray(v, dtype=dtype, device=device) for name, v in values.items()}


def torch_names(cell: str, layer_norm: bool) -> dict[str, str]:
    """``{normcore name: torch name}`` for the parameters other than the weights and ``b*``.

    The layer norms' gains and biases keep their names behind an ``ln_`` prefix.
    """
    shapes = param_shapes(cell, 1, 1, layer_norm)
    return {k: f"ln_{k}" for k in shapes if k.startswith(("gain", "bias"))}


def torch_keys(cell: str, layer_norm: bool) -> tuple[str, ...]:
    """The keys of the torch-layout state of ``cell``, in ``torch.nn.RNN``'s order.

    ``bias_ih_l0``/``bias_hh_l0`` exist where the cell adds a bias outside its
    layer norms: every plain cell and the layer-normalized LSTM (its ``b``).
    """
    shapes = param_shapes(cell, 1, 1, layer_norm)
    biased = any(k in shapes for k in ("b", "b_x"))
    weights = TORCH_KEYS if biased else TORCH_KEYS[:2]
    return (*weights, *torch_names(cell, layer_norm).values())


def layer_suffix(layer: int, reverse: bool) -> str:
    """The name suffix of a stacked layer's parameters: ``""`` for layer 0 forward.

    Otherwise torch's, ``_l1``, ``_l0_reverse``, ...: normcore's stacked modules
    name their parameters ``W_x_l1``, and ``normcore.torch``'s layer norms
    ``ln_gain_x_l1``.
    """
    return "" if layer == 0 and not reverse else f"_l{layer}" + ("_reverse" if reverse else "")


def layer_torch_keys(cell: str, layer_norm: bool, bias: bool, layer: int, reverse: bool) -> dict:
    """``{key of the one-layer torch layout: the key in layer and direction}``.

    Weights and biases take torch.nn's suffix (``weight_ih_l1_reverse``), the
    layer norms' ``ln_`` keys :func:`layer_suffix`; ``bias=False`` drops the
    ``bias_ih``/``bias_hh`` keys.
    """
    torch_suffix = f"_l{layer}" + ("_reverse" if reverse else "")
    keys = {}
    for key in torch_keys(cell, layer_norm):
        if key in TORCH_KEYS:
            if bias or not key.startswith("bias"):
                keys[key] = key[: -len("_l0")] + torch_suffix
        else:
            keys[key] = key + layer_suffix(layer, reverse)
    return keys


def params_from_torch_layout(
    state: Mapping, cell: str, layer_norm: bool, *, copy: bool
) -> dict[str, Any]:
    """normcore params from validated torch-layout ``state``; views of it unless ``copy``.

    Written with array operations only, so on torch tensors that require grad
    the result is differentiable (``normcore.torch``'s modules call it in
    every forward, with ``copy=False``).
    """
    xp = namespace_of(state["weight_ih_l0"])

    def take(a: Any) -> Any:
        return xp.asarray(a, copy=True) if copy else a

    params = {
        "W_x": take(xp.permute_dims(state["weight_ih_l0"], (1, 0))),
        "W_h": take(xp.permute_dims(state["weight_hh_l0"], (1, 0))),
    }
    if "bias_ih_l0" in state:
        b_ih, b_hh = state["bias_ih_l0"], state["bias_hh_l0"]
        if cell == "gru" and not layer_norm:  # b_hn is multiplied by r: keep them apart
            params.update(b_x=take(b_ih), b_h=take(b_hh))
        else:
            params["b"] = b_ih + b_hh
    params.update({k: take(state[t]) for k, t in torch_names(cell, layer_norm).items()})
    order = param_shapes(cell, 1, 1, layer_norm)
    return {k: params[k] for k in order}


def rnn_params_from_torch(
    state_dict: Mapping[str, Array], cell: str, layer_norm: bool = False
) -> dict[str, Array]:
    """Convert a one-layer ``torch.nn.RNN``/``LSTM``/``GRU`` state dict to normcore params.

    The mapping, for a module with ``bias=True``, one layer, one direction
    (``nonlinearity="tanh"`` for RNN; ``batch_first`` does not matter)::

        W_x = weight_ih_l0.T          W_h = weight_hh_l0.T
        rnn, lstm:  b = bias_ih_l0 + bias_hh_l0     (gate order i, f, g, o kept)
        gru:        b_x = bias_ih_l0, b_h = bias_hh_l0  (kept apart: b_hn is
                    multiplied by r inside the candidate)

    With ``layer_norm=True`` the state is that of a ``normcore.torch`` module
    with ``layer_norm=True``: the layer norms' gains and biases come as
    ``ln_<name>`` (``ln_gain_x``, ...), and ``bias_ih_l0``/``bias_hh_l0``
    exist only for the LSTM (summed into ``b``).

    Parameters
    ----------
    state_dict : mapping
        ``module.state_dict()`` (arrays of any library, e.g. torch tensors).
    cell : {"rnn", "lstm", "gru"}
    layer_norm : bool, default False
        Whether the module is layer-normalized.

    Returns
    -------
    dict of str to array
        New arrays of the state dict's library, device and dtype.

    Raises
    ------
    TypeError
        If ``cell`` is not a str, or an entry of ``state_dict`` is not an
        array, or the entries differ in library or dtype.
    ValueError
        If ``cell`` is unknown, ``state_dict`` lacks a key or has others (a
        multi-layer or bidirectional module), the entries are on different
        devices, or their shapes are not those of a ``cell`` module (for
        example an LSTM's state dict converted with ``cell="gru"``).

    Examples
    --------
    >>> import torch, normcore
    >>> lstm = torch.nn.LSTM(3, 2)
    >>> params = normcore.rnn_params_from_torch(lstm.state_dict(), "lstm")
    >>> params["W_x"].shape, params["b"].shape
    (torch.Size([3, 8]), torch.Size([8]))
    """
    check_choice(cell, CELLS, "cell")
    check_bool(layer_norm, "layer_norm")
    check_named_arrays(state_dict, torch_keys(cell, layer_norm), "state_dict")
    inputs = matrix_size(state_dict["weight_ih_l0"], "state_dict['weight_ih_l0']", 1)
    hidden = matrix_size(state_dict["weight_hh_l0"], "state_dict['weight_hh_l0']", 1)
    check_shapes(
        state_dict,
        torch_shapes(cell, inputs, hidden, layer_norm),
        "state_dict",
        f"for cell={cell!r} ({GATES[cell]} blocks of hidden size {hidden}, the columns of "
        f"weight_hh_l0; input size {inputs}, the columns of weight_ih_l0)",
    )
    return params_from_torch_layout(state_dict, cell, layer_norm, copy=True)


def rnn_params_to_torch(
    params: Mapping[str, Array], cell: str, layer_norm: bool = False
) -> dict[str, Array]:
    """Convert normcore params to a torch module state dict.

    The inverse of :func:`rnn_params_from_torch`; for ``rnn``/``lstm`` the
    bias goes to ``bias_ih_l0`` and ``bias_hh_l0`` is zero. Load the result
    with ``module.load_state_dict(...)`` (torch tensors needed for that) into
    a ``torch.nn`` module (``layer_norm=False``) or a ``normcore.torch`` one.

    Parameters
    ----------
    params : mapping
        Exactly the keys of ``rnn_params(cell, ..., layer_norm=layer_norm)``.
    cell : {"rnn", "lstm", "gru"}
    layer_norm : bool, default False

    Returns
    -------
    dict of str to array
        ``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``, ``bias_hh_l0``
        (where the cell has them) and the ``ln_`` entries, in the params'
        library, device and dtype.

    Raises
    ------
    TypeError
        If ``cell`` is not a str, or an entry of ``params`` is not an array,
        or the entries differ in library or dtype.
    ValueError
        If ``cell`` is unknown, ``params`` has other keys than those of
        ``cell`` without layer norm, the entries are on different devices, or
        their shapes do not fit together.

    Examples
    --------
    >>> import torch, normcore
    >>> gru = torch.nn.GRU(3, 2, dtype=torch.float64)
    >>> params = normcore.rnn_params("gru", 3, 2, layer_norm=False, like=torch, dtype="float64")
    >>> gru.load_state_dict(normcore.rnn_params_to_torch(params, "gru"))
    <All keys matched successfully>
    """
    check_choice(cell, CELLS, "cell")
    check_bool(layer_norm, "layer_norm")
    xp = check_named_arrays(
        params, param_names(cell, layer_norm), "params",
        f"for cell={cell!r}, layer_norm={layer_norm}",
    )  # fmt: skip
    inputs = matrix_size(params["W_x"], "params['W_x']", 0)
    hidden = matrix_size(params["W_h"], "params['W_h']", 0)
    check_shapes(
        params,
        param_shapes(cell, inputs, hidden, layer_norm),
        "params",
        f"for cell={cell!r} with input size {inputs} (the rows of W_x) and hidden size "
        f"{hidden} (the rows of W_h)",
    )
    state = {
        "weight_ih_l0": xp.asarray(xp.permute_dims(params["W_x"], (1, 0)), copy=True),
        "weight_hh_l0": xp.asarray(xp.permute_dims(params["W_h"], (1, 0)), copy=True),
    }
    if "b_x" in params:
        state["bias_ih_l0"] = xp.asarray(params["b_x"], copy=True)
        state["bias_hh_l0"] = xp.asarray(params["b_h"], copy=True)
    elif "b" in params:
        state["bias_ih_l0"] = xp.asarray(params["b"], copy=True)
        state["bias_hh_l0"] = xp.zeros_like(params["b"])
    state.update(
        {t: xp.asarray(params[k], copy=True) for k, t in torch_names(cell, layer_norm).items()}
    )
    return state

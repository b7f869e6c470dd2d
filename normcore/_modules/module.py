"""The one pattern every stateful normcore object follows.

A module owns named arrays of one library, device and dtype: *parameters*
(trained: gains, biases, weights) and *buffers* (state such as running
statistics). ``__call__`` runs the forward and remembers what ``backward``
needs; ``backward(dy)`` returns ``dx`` and stores the parameter gradients,
which ``grads()`` returns and an optimizer from ``normcore.optim`` consumes.
Arrays are replaced, never written into, so every backend (including
immutable ones) works and a failed call leaves the object unchanged.

Inputs are checked against the module by :meth:`Module._check_input`: the
module's library, device and dtype (float16/bfloat16 inputs are accepted by a
float32 module), with messages naming the input and the module. ``backward``
differentiates the forward call that was made: the forward saves the
parameters it used in ``_saved`` and ``backward`` uses those, not the current
ones (an optimizer step or ``load_state_dict`` in between changes nothing).

*Threads.* Every change of a module's arrays (the running update of a
training call, :meth:`Module.load_state_dict`, :meth:`Module.to`) happens
under the module's lock, ``_lock``, so concurrent calls leave the state some
sequential order of them gives. The lock is never held while user code runs
(warnings are issued after it is released) and is left out of pickles and
deep copies (each copy gets its own).
"""

from __future__ import annotations

import importlib
import pickle
import threading
from collections.abc import Mapping
from typing import Any

from .._plumbing.compat import (
    device_of,
    empty_on,
    is_array,
    library_label,
    library_name,
    namespace_of,
    resolve_creation,
    resolve_device,
    to_device,
    to_numpy,
    without_grad,
)
from .._plumbing.validation import (
    check_arrays,
    check_bool,
    check_eps_in,
    check_mapping,
    compatible_devices,
    mismatched_keys,
    prefix_hint,
)

__all__ = ["Module"]


class Module:
    """Base class of normcore's layer objects (LayerNorm, BatchNorm, LSTM, ...).

    Subclasses list their array attributes in ``_parameter_names`` and
    ``_buffer_names`` (an attribute may be None, e.g. ``affine=False``), create
    them with :meth:`_new`, and implement ``__call__`` and ``backward``.

    Parameters
    ----------
    like : array, array library or None
        Library and device of the arrays: an array (its library and device), a
        library such as ``numpy``, ``torch`` or ``cupy``, or None for NumPy.
    device : optional
        Device of the arrays, as the library names it (``"cuda:1"`` for torch,
        a ``cupy.cuda.Device`` for CuPy); default: ``like``'s, or the library's default.
    dtype : dtype or str, optional
        Real floating dtype of the parameters; default float32.

    Attributes
    ----------
    training : bool
        The mode :meth:`train` and :meth:`eval` set (True for a new module);
        layers that behave differently in training (:class:`normcore.BatchNorm`) use it
        as the default of each call's ``training=``.

    Notes
    -----
    *Threads.* Updates of a module's arrays (a training call's running
    update, :meth:`load_state_dict`, :meth:`to`) are serialized: concurrent
    calls leave the state of some sequential order. A forward/backward pair is
    not: :meth:`backward` uses what the last forward saved, whichever thread
    called it.
    """

    _parameter_names: tuple[str, ...] = ()
    _buffer_names: tuple[str, ...] = ()
    # float16/bfloat16 input to a float32 module (the functional API's mixed-precision
    # rule); modules whose functions need one dtype throughout turn it off.
    _accepts_low_precision: bool = True

    def __init__(self, *, like: Any = None, device: Any = None, dtype: Any = None) -> None:
        self._xp, device, self._dtype = resolve_creation(like, device, dtype)
        self._device = self._resolved_device(device)
        self._grads: dict[str, Any] = {}
        self._saved: Any = None  # what backward needs from the last forward
        self.training = True
        # Serializes every read-compute-assign of the module's arrays (see the module docstring).
        self._lock = threading.Lock()

    # -- copying and pickling ----------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        """State for ``pickle`` and ``copy.deepcopy``: the arrays and settings.

        The Array API namespace is a module, which pickle cannot store: it is
        kept by name and imported again. What the last forward saved for
        ``backward`` is left out (it is rebuilt by the next forward), and stored
        gradients are kept without their autograd graph.
        """
        state = dict(self.__dict__)
        state.pop("_lock", None)  # a lock cannot be pickled; every copy gets its own
        state["_xp"] = self._xp.__name__
        if not _picklable(self._device):  # JAX's Device objects: kept by name ("cpu:0")
            state["_device"] = _DeviceName(str(self._device))
        state["_saved"] = None
        # A stored gradient may carry the input's autograd graph (torch), which
        # deepcopy refuses: the copy keeps the values.
        state["_grads"] = {name: without_grad(g) for name, g in self._grads.items()}
        return state

    def __setstate__(self, state: Mapping[str, Any]) -> None:
        state = dict(state)
        state["_xp"] = importlib.import_module(state["_xp"])
        state.setdefault("training", True)  # pickled before modules had a mode
        self.__dict__.update(state)
        self._lock = threading.Lock()
        if isinstance(self._device, _DeviceName):
            self._device = self._resolved_device(str(self._device))

    def _resolved_device(self, device: Any) -> Any:
        # The device as the library reports it for an array ("cuda:0" for "cuda",
        # the default for None), so that inputs compare equal to it.
        device = resolve_device(self._xp, device)
        return device_of(empty_on(self._xp, device, self._dtype))

    # -- creation ------------------------------------------------------------
    def _new(self, fill: float, shape: tuple[int, ...], dtype: Any = None) -> Any:
        return self._xp.full(shape, fill, dtype=dtype or self._dtype, device=self._device)

    def _check_eps(self, eps: float) -> None:
        """Refuse an ``eps`` the module's computations cannot add (the functional API's rule).

        Statistics of float16/bfloat16 modules are computed in float32.
        """
        xp, dtype = self._xp, self._dtype
        check_eps_in(eps, xp, xp.float32 if xp.finfo(dtype).bits < 32 else dtype)

    def _init_affine(self, shape: tuple[int, ...], affine: bool, with_bias: bool = True) -> None:
        """Set ``gain`` (ones) and ``bias`` (zeros) of ``shape``, or None where absent."""
        self.gain = self._new(1.0, shape) if affine else None
        self.bias = self._new(0.0, shape) if affine and with_bias else None

    # -- mode ------------------------------------------------------------------
    def train(self, mode: bool = True) -> Module:
        """Set training mode (``mode=True``) or inference mode; return the module.

        As ``torch.nn.Module.train``: only layers that behave differently in
        training look at :attr:`training`: :class:`normcore.BatchNorm` (an explicit
        ``training=`` in a call still wins) and the recurrent layers, which in
        training keep what their backward needs.

        Examples
        --------
        >>> import normcore
        >>> bn = normcore.BatchNorm(3).eval()
        >>> bn.training
        False
        >>> bn.train().training
        True
        """
        self.training = check_bool(mode, "mode")
        return self

    def eval(self) -> Module:
        """Set inference mode (``train(False)``); return the module."""
        return self.train(False)

    # -- introspection ---------------------------------------------------------
    @property
    def xp(self) -> Any:
        """Array API namespace of the module's arrays."""
        return self._xp

    @property
    def device(self) -> Any:
        """Device of the module's arrays."""
        return self._device

    @property
    def dtype(self) -> Any:
        """Dtype of the module's parameters."""
        return self._dtype

    def parameters(self) -> dict[str, Any]:
        """Return ``{name: array}`` of the trainable parameters that exist."""
        return {n: getattr(self, n) for n in self._parameter_names if getattr(self, n) is not None}

    def buffers(self) -> dict[str, Any]:
        """Return ``{name: array}`` of the non-trainable state that exists."""
        return {n: getattr(self, n) for n in self._buffer_names if getattr(self, n) is not None}

    def grads(self) -> dict[str, Any]:
        """Return ``{name: gradient}`` stored by the last :meth:`backward`."""
        return dict(self._grads)

    def zero_grad(self) -> None:
        """Forget the stored gradients."""
        self._grads = {}

    # -- state -----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Return every parameter and buffer by name (the arrays themselves, not copies)."""
        return {**self.parameters(), **self.buffers()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace parameters and buffers with the arrays in ``state``.

        Values may be arrays of any library (NumPy arrays from ``numpy.load``,
        torch tensors, ...): they are converted to the module's library,
        device and dtype. Every key and shape is checked first; on any error
        nothing changes.

        Raises
        ------
        TypeError
            If ``state`` is not a mapping, or a value is not an array of real numbers.
        ValueError
            If keys are missing or unexpected, or a value has the wrong shape
            or an invalid value for its entry (see the subclass).
        """
        check_mapping(state, "state_dict", "a mapping of names to arrays (from state_dict())")
        current = self.state_dict()
        missing, extra = mismatched_keys(state, current)
        if missing or extra:
            raise ValueError(
                f"state_dict does not match {type(self).__name__}: "
                f"missing keys {missing}, unexpected keys {extra}"
                f"{prefix_hint(missing, extra) or self._torch_names_hint(extra)}"
            )
        converted = {}
        for name, old in current.items():
            value = state[name]
            if not _is_real_array(value):
                raise TypeError(
                    f"state_dict[{name!r}] must be an array of real numbers, got "
                    f"{library_label(value)}"
                    + (f" of dtype {value.dtype}" if is_array(value) else "")
                )
            shape = tuple(getattr(value, "shape", ()))
            if shape != tuple(old.shape):
                raise ValueError(
                    f"state_dict[{name!r}] must have shape {tuple(old.shape)}, got {shape}"
                )
            if self._xp.isdtype(old.dtype, "integral") and not _holds_whole_numbers(value):
                raise ValueError(
                    f"state_dict[{name!r}] must hold finite whole numbers (it is stored as "
                    f"{old.dtype}), got a fractional, infinite or NaN value"
                )
            converted[name] = self._convert(value, old)
        self._check_state(converted)
        with self._lock:
            for name, value in converted.items():
                setattr(self, name, value)

    def _torch_names_hint(self, extra: list) -> str:
        """A hint when the unexpected keys are torch's names of this module's state.

        (A ``torch.nn`` or ``normcore.torch`` state dict given to
        :meth:`load_state_dict` instead of ``load_torch_state_dict``.)
        """
        to_torch = getattr(self, "to_torch_state_dict", None)
        if to_torch is None or getattr(self, "load_torch_state_dict", None) is None:
            if "weight" in extra and "gain" in self._parameter_names:  # LayerNorm, GroupNorm
                return (
                    "; 'weight' is torch's name of 'gain': rename it, e.g. "
                    "{'gain' if k == 'weight' else k: v for k, v in state.items()}"
                )
            return ""
        names = set(to_torch())
        torch_keys = [key for key in extra if key in names]
        if not torch_keys:
            return ""
        return (
            f"; {torch_keys[0]!r} is one of torch's names: load a torch.nn (or normcore.torch) "
            f"state dict with {type(self).__name__}.load_torch_state_dict(state) instead"
        )

    def _convert(self, value: Any, like: Any) -> Any:
        xp = self._xp
        if getattr(value, "requires_grad", False):  # a torch Parameter: load its values only
            value = value.detach()
        if namespace_of(value) is not xp:
            value = to_numpy(value)
        return xp.asarray(value, dtype=like.dtype, device=device_of(like), copy=True)

    def _check_state(self, state: Mapping[str, Any]) -> None:
        """Subclass hook: validate converted state before it is assigned."""

    def to(self, device: Any) -> Module:
        """Move every array of the module to ``device`` (in place); return the module.

        Raises
        ------
        ValueError
            If the library has no such device (nothing is moved then).
        """
        resolved = self._resolved_device(device)  # checked before any array moves
        with self._lock:
            for name, value in self.state_dict().items():
                setattr(self, name, to_device(value, device))
            self._grads = {k: to_device(v, device) for k, v in self._grads.items()}
            self._device = resolved
            self._saved = None
        return self

    # -- inputs ------------------------------------------------------------------
    def _check_input(self, x: Any, name: str = "x") -> Any:
        """Check that ``x`` is an array of this module's library, device and dtype; return xp.

        float16/bfloat16 ``x`` is accepted by a float32 module unless the class
        sets ``_accepts_low_precision = False``. Arguments that
        are not real floating-point arrays of at least one dimension get the
        functional API's messages.
        """
        xp, cls = self._xp, type(self).__name__
        if not is_array(x) or x.ndim == 0:
            check_arrays(x, x_name=name)  # raises the functional API's message
        if namespace_of(x) is not xp:
            raise TypeError(
                f"{name} must be an array of this {cls}'s library "
                f"({library_name(xp)}), got "
                f"{library_label(x)}; create the {cls} with like={name}"
            )
        dtype = x.dtype
        low_precision = self._accepts_low_precision and (
            self._dtype == xp.float32
            and xp.isdtype(dtype, "real floating")
            and xp.finfo(dtype).bits < 32
        )
        if dtype != self._dtype and not low_precision:
            check_arrays(x, x_name=name)  # a non-floating dtype: the functional API's message
            label = getattr(self._dtype, "__name__", self._dtype)  # NumPy's float32 is a class
            accepted = (
                f" (float16/bfloat16 is accepted by a float32 {cls})"
                if self._accepts_low_precision
                else ""
            )
            raise TypeError(
                f"{name} must have this {cls}'s dtype {label}{accepted}, got {dtype}; "
                f"convert {name} or create the {cls} with dtype=..."
            )
        if not compatible_devices(device_of(x), self._device):  # a tracer has no device
            raise ValueError(
                f"this {cls}'s arrays are on device {self._device} but {name} is on device "
                f"{device_of(x)}; move one of them explicitly with .to() (normcore never "
                "moves data between devices)"
            )
        return xp

    def _store_gradients(self, grads: Any) -> Any:
        """Store a ``Gradients``' dgain/dbias as the ``gain``/``bias`` gradients; return dx."""
        found = {"gain": grads.dgain, "bias": grads.dbias}
        self._grads = {name: g for name, g in found.items() if g is not None}
        return grads.dx

    def _require_saved(self) -> Any:
        if self._saved is None:
            raise RuntimeError(f"{type(self).__name__}.backward needs a forward call first")
        return self._saved

    def _placement(self) -> str:
        """``"numpy float32 on cpu"``: the library, dtype and device, for reprs."""
        library = library_name(self._xp)
        dtype = getattr(self._dtype, "__name__", None) or str(self._dtype).rsplit(".", 1)[-1]
        return f"{library} {dtype} on {self._device}"

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}={tuple(v.shape)}" for k, v in self.state_dict().items())
        return f"{type(self).__name__}({shapes}; {self._placement()})"


class _DeviceName(str):
    """A pickled module's device that pickle cannot store, by its name (resolved on load)."""


def _picklable(obj: Any) -> bool:
    try:
        pickle.dumps(obj)
    except Exception:  # pickle raises TypeError, or anything a __reduce__ raises
        return False
    return True


def _is_real_array(value: Any) -> bool:
    """Whether ``value`` is an array of real numbers (integer, boolean or real floating)."""
    if not is_array(value):
        return False
    try:
        return namespace_of(value).isdtype(value.dtype, ("bool", "integral", "real floating"))
    except (TypeError, ValueError):  # dtypes outside the standard (strings, objects)
        return False


def _holds_whole_numbers(value: Any) -> bool:
    """Whether converting ``value`` to an integer dtype keeps every value exactly."""
    xp = namespace_of(value)
    if not xp.isdtype(value.dtype, "real floating"):
        return True
    return bool(xp.all(xp.isfinite(value))) and bool(xp.all(xp.round(value) == value))

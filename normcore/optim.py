"""Optimizers written once against the Array API: :class:`SGD` and :class:`Adam`.

An optimizer updates one of two kinds of *targets*:

* a mutable mapping of named arrays, such as the dict :func:`normcore.rnn_params`
  returns: ``opt.step(grads)`` with ``grads`` a mapping with the same keys
  (e.g. ``rnn_backward(...).dparams``); entries are replaced by key;
* a :class:`normcore.Module` (or any object with its ``parameters()`` and
  ``grads()``): ``opt.step()`` reads the gradients its last ``backward``
  stored and replaces each parameter with ``setattr``.

Arrays are replaced, never written into, so read-only NumPy arrays and
immutable libraries work; a torch parameter that requires grad is replaced by
a new leaf tensor that requires grad, computed outside autograd. Every
gradient is checked against its parameter (key, library, device, dtype,
shape) and every new value is computed before anything is assigned, so a step
that raises changes nothing. The update rules
are PyTorch's (``torch.optim.SGD`` without dampening or Nesterov,
``torch.optim.Adam`` without weight decay). Parameters may be 0-d, as in
``torch.optim``.

*Replaced parameters.* State (momentum buffers, Adam's moments and step
count) is kept per parameter name. If the array under a name is replaced by
one of another shape, dtype, library or device, its state belongs to a
parameter that no longer exists: :meth:`Optimizer.step` raises a ValueError
naming it rather than broadcast or mix the old state into the new parameter
(``torch.optim`` keeps state per parameter object, so a new parameter starts
from none there). Call :meth:`Optimizer.reset_state` to start afresh.

*Threads.* Concurrent :meth:`Optimizer.step` calls are applied one after the
other (some sequential order): a step computes its new values from the
parameters and state it read, then, under the optimizer's lock, replaces them
only if no other step of this optimizer came in between, and otherwise
computes them again. No lock is held while the arithmetic runs; the target's
own item assignment (or ``setattr`` on a Module) runs under it. Not
synchronized: replacing parameters from another thread while it steps, or two
optimizers stepping one target. The lock is left out of pickles and copies.
"""

from __future__ import annotations

import math
import numbers
import threading
from collections.abc import Mapping, MutableMapping
from typing import Any

from ._plumbing.compat import (
    device_of,
    is_array,
    library_label,
    namespace_of,
    requiring_grad_like,
    without_grad,
)
from ._plumbing.validation import check_arrays, check_gradient_given, check_keys

__all__ = ["SGD", "Adam", "Optimizer"]


def _check_rate(value: Any, name: str, *, upper: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {library_label(value)}")
    value = float(value)
    ok = math.isfinite(value) and value >= 0 and (upper is None or value < upper)
    if not ok:
        bound = f"in [0, {upper})" if upper is not None else ">= 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return value


class Optimizer:
    """Base class: holds the targets and applies a per-parameter rule.

    Parameters
    ----------
    targets : mutable mapping of str to array, or Module
        What to update (see the module docstring).
    lr : float
        Learning rate, >= 0.
    """

    def __init__(self, targets: Any, lr: float) -> None:
        is_module = callable(getattr(targets, "parameters", None)) and callable(
            getattr(targets, "grads", None)
        )
        if not is_module and not isinstance(targets, MutableMapping):
            raise TypeError(
                "targets must be a mutable mapping of named arrays or a normcore Module "
                f"(parameters() and grads()), got {library_label(targets)}"
            )
        self._targets = targets
        self._is_module = is_module
        self.lr = _check_rate(lr, "lr")
        self.state: dict[str, dict[str, Any]] = {}  # per-parameter buffers, by name
        self.steps = 0
        self._lock = threading.Lock()  # one step at a time (see the module docstring)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        del state["_lock"]  # a lock cannot be pickled; every copy gets its own
        return state

    def __setstate__(self, state: Mapping[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def reset_state(self, name: str | None = None) -> None:
        """Forget the state of parameter ``name`` (every parameter's with None).

        For a parameter replaced by another one (another shape, for example):
        its next step starts from no momentum, as a new parameter's first.

        Raises
        ------
        KeyError
            If ``name`` is neither a parameter nor in :attr:`state`.
        """
        with self._lock:
            if name is None:
                self.state.clear()
                return
            if name not in self.state and name not in self._parameters():
                raise KeyError(
                    f"reset_state: {name!r} is not a parameter of this optimizer "
                    f"(parameters: {sorted(self._parameters(), key=str)})"
                )
            self.state.pop(name, None)

    def _parameters(self) -> Mapping[str, Any]:
        return self._targets.parameters() if self._is_module else self._targets

    def _checked_grads(self, grads: Any, params: Mapping[str, Any]) -> dict[str, Any]:
        if grads is None:
            if not self._is_module:
                raise TypeError("step() on a mapping of parameters needs grads, got None")
            grads = self._targets.grads()
            if not grads and params:
                raise ValueError(
                    f"step() found no gradients in the {type(self._targets).__name__}: call its "
                    "backward() first (or pass grads)"
                )
        check_keys(grads, params, "grads", "(the parameters' names)")
        for name, param in params.items():
            grad = grads[name]
            check_gradient_given(grad, f"grads[{name!r}]")
            # 0-d parameters are fine (as in torch.optim); check_arrays wants >= 1 dimension.
            check_arrays(
                _at_least_1d(param),
                x_name=f"parameter {name!r}",
                exact_dtype=True,
                **{f"grads[{name!r}]": _at_least_1d(grad)},
            )
            if tuple(grad.shape) != tuple(param.shape):
                raise ValueError(
                    f"grads[{name!r}] must have shape {tuple(param.shape)}, got {tuple(grad.shape)}"
                )
            self._check_state_fits(name, param)
        return dict(grads)

    def _check_state_fits(self, name: str, param: Any) -> None:
        """Refuse state left by an earlier parameter under ``name`` that ``param`` cannot use."""
        for key, buffer in self.state.get(name, {}).items():
            # the cheap tests first: this runs for every buffer of every step
            if type(buffer) is int or _fits(buffer, param) or not is_array(buffer):
                continue
            same_library = namespace_of(buffer) is namespace_of(param)  # torch Parameter: torch
            for what, same, mine, theirs in (
                ("library", same_library, library_label(buffer), library_label(param)),
                ("shape", None, tuple(buffer.shape), tuple(param.shape)),
                ("dtype", None, buffer.dtype, param.dtype),
                ("device", None, device_of(buffer), device_of(param)),
            ):
                if not (mine == theirs if same is None else same):
                    raise ValueError(
                        f"parameter {name!r} has {what} {theirs} but the optimizer's state for "
                        f"it ({key!r}, from earlier steps) has {what} {mine}: the parameter was "
                        f"replaced by another one; call reset_state({name!r}) to start its "
                        "state afresh, or create a new optimizer"
                    )

    def step(self, grads: Mapping[str, Any] | None = None) -> None:
        """Apply one update.

        Parameters
        ----------
        grads : mapping of str to array, optional
            Gradients by parameter name, exactly the parameters' keys. Required
            for a mapping target; for a Module it defaults to ``grads()``.

        Raises
        ------
        TypeError, ValueError
            If ``grads`` is missing, has other keys, or an entry has another
            library, device, dtype or shape than its parameter. Nothing is
            updated then: parameters, ``state`` and ``steps`` stay as they were.
        """
        while True:
            # Computed with no lock held (library code may warn, and a warning
            # hook is user code), committed under the lock only if no other step
            # of this optimizer came in between; otherwise computed again. (Only
            # its own steps are compared: a target's parameters() may build new
            # objects on every call, and identity would then never match.)
            with self._lock:  # a snapshot no commit is halfway through
                params = dict(self._parameters())
                steps, states = self.steps, {name: self.state.get(name) for name in params}
            checked = self._checked_grads(grads, params)
            updated, buffers = self._new_values(params, checked, states)
            with self._lock:
                if self.steps == steps and all(self.state.get(k) is v for k, v in states.items()):
                    self._commit(updated, buffers)
                    return

    def _new_values(
        self, params: Mapping[str, Any], grads: Mapping[str, Any], states: Mapping[str, Any]
    ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """The new parameters and buffers (nothing assigned: a step that raises changes nothing)."""
        updated: dict[str, Any] = {}
        buffers: dict[str, dict[str, Any]] = {}
        for name, param in params.items():
            # The update is no part of any autograd graph (like torch.optim's,
            # under no_grad): a trainable torch parameter stays a leaf.
            new, found = self._update(
                without_grad(param), without_grad(grads[name]), states[name] or {}
            )
            if param.ndim == 0:  # NumPy's 0-d arithmetic gives scalars: keep arrays
                xp = namespace_of(param)
                new = xp.asarray(new)
                found = {k: v if isinstance(v, int) else xp.asarray(v) for k, v in found.items()}
            buffers[name] = found
            updated[name] = requiring_grad_like(new, param)
        return updated, buffers

    def _commit(self, updated: Mapping[str, Any], buffers: Mapping[str, dict[str, Any]]) -> None:
        self.steps += 1
        self.state.update({name: found for name, found in buffers.items() if found})
        for name, value in updated.items():
            if self._is_module:
                setattr(self._targets, name, value)
            else:
                self._targets[name] = value

    def _update(
        self, param: Any, grad: Any, buffers: Mapping[str, Any]
    ) -> tuple[Any, dict[str, Any]]:
        """Return the new parameter and its new buffers, given the old ones (never modified)."""
        raise NotImplementedError


def _fits(buffer: Any, param: Any) -> bool:
    """Whether ``buffer`` has ``param``'s array type, shape, dtype and device."""
    if type(buffer) is not type(param) or buffer.shape != param.shape:
        return False
    if buffer.dtype != param.dtype:
        return False
    here, there = getattr(buffer, "device", None), getattr(param, "device", None)
    if here is None or there is None:  # no device attribute: ask array_api_compat
        return device_of(buffer) == device_of(param)
    return here == there


def _at_least_1d(a: Any) -> Any:
    """A 0-d array as a 1-element view (for the checks); anything else as it is."""
    if is_array(a) and a.ndim == 0:
        return namespace_of(a).reshape(a, (1,))
    return a


class SGD(Optimizer):
    """Stochastic gradient descent with optional (heavy-ball) momentum.

    ``buf = momentum * buf + grad`` (``buf = grad`` at the first step),
    ``param -= lr * buf``; with ``momentum=0`` simply ``param -= lr * grad``.

    Parameters
    ----------
    targets : mutable mapping of str to array, or Module
    lr : float
        Learning rate, >= 0.
    momentum : float, default 0
        In ``[0, 1)``.

    Examples
    --------
    >>> import numpy as np
    >>> from normcore.optim import SGD
    >>> params = {"w": np.array([1.0, 2.0])}
    >>> opt = SGD(params, lr=0.5, momentum=0.9)
    >>> opt.step({"w": np.array([1.0, -1.0])})
    >>> opt.step({"w": np.array([1.0, -1.0])})
    >>> params["w"]
    array([-0.45,  3.45])
    """

    def __init__(self, targets: Any, lr: float, momentum: float = 0.0) -> None:
        super().__init__(targets, lr)
        self.momentum = _check_rate(momentum, "momentum", upper=1.0)

    def _update(
        self, param: Any, grad: Any, buffers: Mapping[str, Any]
    ) -> tuple[Any, dict[str, Any]]:
        if not self.momentum:
            return param - self.lr * grad, {}
        previous = buffers.get("momentum")
        if previous is None:  # a copy: the caller may reuse its gradient array in place
            direction = namespace_of(grad).asarray(grad, copy=True)
        else:
            direction = self.momentum * previous + grad
        return param - self.lr * direction, {"momentum": direction}


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015) with PyTorch's arithmetic.

    ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``,
    ``param -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``, with
    ``t`` the parameter's own step count (``state[name]["step"]``, as in
    ``torch.optim.Adam``).

    Parameters
    ----------
    targets : mutable mapping of str to array, or Module
    lr : float, default 1e-3
    betas : tuple of two floats, default (0.9, 0.999)
        Each in ``[0, 1)``.
    eps : float, default 1e-8

    Examples
    --------
    >>> import numpy as np
    >>> from normcore.optim import Adam
    >>> params = {"w": np.array([1.0, 2.0])}
    >>> opt = Adam(params, lr=0.1)
    >>> opt.step({"w": np.array([3.0, -0.5])})
    >>> params["w"]  # the first step moves each entry by about lr
    array([0.9, 2.1])
    """

    def __init__(
        self,
        targets: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        super().__init__(targets, lr)
        if not (isinstance(betas, tuple | list) and len(betas) == 2):
            raise TypeError(f"betas must be a tuple of two floats, got {betas!r}")
        self.betas = (
            _check_rate(betas[0], "betas[0]", upper=1.0),
            _check_rate(betas[1], "betas[1]", upper=1.0),
        )
        self.eps = _check_rate(eps, "eps")

    def _update(
        self, param: Any, grad: Any, buffers: Mapping[str, Any]
    ) -> tuple[Any, dict[str, Any]]:
        xp = namespace_of(param)
        beta1, beta2 = self.betas
        m, v = buffers.get("exp_avg"), buffers.get("exp_avg_sq")
        # Per parameter (as torch.optim's state["step"]): a parameter added or
        # reset later gets the bias correction of its own first step.
        step = buffers.get("step", 0) + 1
        # The first step starts from zero moments: beta * 0 drops out, no zeros needed.
        m = (1 - beta1) * grad if m is None else beta1 * m + (1 - beta1) * grad
        v = (1 - beta2) * (grad * grad) if v is None else beta2 * v + (1 - beta2) * (grad * grad)
        correction1 = 1 - beta1**step
        correction2 = 1 - beta2**step
        denom = xp.sqrt(v) / math.sqrt(correction2) + self.eps
        new = param - (self.lr / correction1) * (m / denom)
        return new, {"exp_avg": m, "exp_avg_sq": v, "step": step}

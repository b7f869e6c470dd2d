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
``torch.optim.Adam`` without weight decay).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, MutableMapping
from typing import Any

from ._plumbing.compat import library_label, namespace_of, requiring_grad_like, without_grad
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

    def _parameters(self) -> Mapping[str, Any]:
        return self._targets.parameters() if self._is_module else self._targets

    def _checked_grads(self, grads: Any) -> dict[str, Any]:
        params = self._parameters()
        if grads is None:
            if not self._is_module:
                raise TypeError("step() on a mapping of parameters needs grads, got None")
            grads = self._targets.grads()
            if not grads and self._parameters():
                raise ValueError(
                    f"step() found no gradients in the {type(self._targets).__name__}: call its "
                    "backward() first (or pass grads)"
                )
        check_keys(grads, params, "grads", "(the parameters' names)")
        for name, param in params.items():
            grad = grads[name]
            check_gradient_given(grad, f"grads[{name!r}]")
            check_arrays(
                param, x_name=f"parameter {name!r}", exact_dtype=True, **{f"grads[{name!r}]": grad}
            )
            if tuple(grad.shape) != tuple(param.shape):
                raise ValueError(
                    f"grads[{name!r}] must have shape {tuple(param.shape)}, got {tuple(grad.shape)}"
                )
        return dict(grads)

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
        grads = self._checked_grads(grads)
        steps = self.steps + 1
        # Everything new goes into locals first: assigned only once every update succeeded.
        updated: dict[str, Any] = {}
        buffers: dict[str, dict[str, Any]] = {}
        for name, param in self._parameters().items():
            # The update is no part of any autograd graph (like torch.optim's,
            # under no_grad): a trainable torch parameter stays a leaf.
            new, buffers[name] = self._update(
                without_grad(param), without_grad(grads[name]), self.state.get(name, {}), steps
            )
            updated[name] = requiring_grad_like(new, param)
        self.steps = steps
        self.state.update({name: found for name, found in buffers.items() if found})
        for name, value in updated.items():
            if self._is_module:
                setattr(self._targets, name, value)
            else:
                self._targets[name] = value

    def _update(
        self, param: Any, grad: Any, buffers: Mapping[str, Any], step: int
    ) -> tuple[Any, dict[str, Any]]:
        """Return the new parameter and its new buffers, given the old ones (never modified)."""
        raise NotImplementedError


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
        self, param: Any, grad: Any, buffers: Mapping[str, Any], step: int
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
    ``param -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``.

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
        self, param: Any, grad: Any, buffers: Mapping[str, Any], step: int
    ) -> tuple[Any, dict[str, Any]]:
        xp = namespace_of(param)
        beta1, beta2 = self.betas
        m, v = buffers.get("exp_avg"), buffers.get("exp_avg_sq")
        # The first step starts from zero moments: beta * 0 drops out, no zeros needed.
        m = (1 - beta1) * grad if m is None else beta1 * m + (1 - beta1) * grad
        v = (1 - beta2) * (grad * grad) if v is None else beta2 * v + (1 - beta2) * (grad * grad)
        correction1 = 1 - beta1**step
        correction2 = 1 - beta2**step
        denom = xp.sqrt(v) / math.sqrt(correction2) + self.eps
        return param - (self.lr / correction1) * (m / denom), {"exp_avg": m, "exp_avg_sq": v}

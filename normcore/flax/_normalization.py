"""The normalization drop-ins for ``flax.nnx``: Flax's modules, normcore's ``__call__``.

Each class subclasses its ``flax.nnx`` namesake, so Flax's ``__init__``
creates the same parameters and statistics with the same initializers and
dtypes, and Flax's ``promote_dtype`` decides the computation dtype as in the
module replaced; only ``__call__`` is normcore's. Options normcore does not
implement raise ``ValueError`` at construction or call, naming the option.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from normcore._functional.batch_norm import batch_norm, batch_norm_train
from normcore._functional.group_norm import group_norm
from normcore._functional.layer_norm import layer_norm, rms_norm
from normcore._reference.running import RunningStats
from normcore.sync import JaxAxis

__all__ = ["BatchNorm", "GroupNorm", "LayerNorm", "RMSNorm"]


def _axes(value: Any, ndim: int) -> tuple[int, ...]:
    axes = (value,) if isinstance(value, int) else tuple(value)
    return tuple(sorted(a % ndim for a in axes))


def _refuse(name: str, value: Any, module: str, why: str) -> None:
    if value is not None:
        raise ValueError(f"normcore.flax.{module} does not support {name}={value!r}: {why}")


def _check_layer_options(kwargs: dict[str, Any], module: str) -> None:
    """LayerNorm/RMSNorm: parameters over the normalized axes, statistics per example."""
    reduction = kwargs.get("reduction_axes", -1)
    features = kwargs.get("feature_axes", -1)
    # compared as negative axes, the only form valid for inputs of any rank
    if _axes(reduction, 64) != _axes(features, 64):
        raise ValueError(
            f"normcore.flax.{module} needs feature_axes equal to reduction_axes (the "
            f"parameters span the normalized axes), got reduction_axes={reduction!r}, "
            f"feature_axes={features!r}; use flax.nnx.{module} for other layouts"
        )
    for name in ("axis_name", "axis_index_groups"):
        _refuse(name, kwargs.get(name), module, "its statistics are per example")


def _no_mask(mask: Any, module: str) -> None:
    _refuse("mask", mask, module, f"use flax.nnx.{module} for masked statistics")


def _feature_shaped(x: Any, axes: tuple[int, ...], *params: Any) -> tuple[Any, ...]:
    """Flax keeps parameters flat (``num_features``); normcore's span the normalized axes."""
    shape = tuple(x.shape[a] for a in axes)
    return tuple(None if p is None else p.reshape(shape) for p in params)


def _value(variable: Any) -> Any:
    return None if variable is None else variable[...]


class LayerNorm(nnx.LayerNorm):
    """Drop-in for ``flax.nnx.LayerNorm`` computed by :func:`normcore.layer_norm`.

    Same constructor, parameters (``scale``, ``bias``) and defaults
    (``epsilon=1e-6``, ``reduction_axes=-1``). ``feature_axes`` must equal
    ``reduction_axes`` (the parameters span the normalized axes, as in
    :func:`normcore.layer_norm`); ``axis_name``/``axis_index_groups`` and
    ``mask`` are not supported and raise ``ValueError``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> import normcore.flax
    >>> ln = normcore.flax.LayerNorm(4, rngs=nnx.Rngs(0))
    >>> isinstance(ln, nnx.LayerNorm)
    True
    >>> ln(jnp.array([[1.0, 2.0, 3.0, 4.0]])).round(4)
    Array([[-1.3416, -0.4472,  0.4472,  1.3416]], dtype=float32)
    """

    def __init__(self, num_features: int, **kwargs: Any) -> None:
        _check_layer_options(kwargs, "LayerNorm")
        super().__init__(num_features, **kwargs)

    def __call__(self, x, *, mask=None):
        """Normalize ``x`` over ``reduction_axes``, then scale and shift."""
        _no_mask(mask, "LayerNorm")
        x, scale, bias = self.promote_dtype(
            (x, _value(self.scale), _value(self.bias)), dtype=self.dtype
        )
        axes = _axes(self.reduction_axes, x.ndim)
        scale, bias = _feature_shaped(x, axes, scale, bias)
        return layer_norm(x, scale, bias, axis=axes, eps=self.epsilon)


class RMSNorm(nnx.RMSNorm):
    """Drop-in for ``flax.nnx.RMSNorm`` computed by :func:`normcore.rms_norm`.

    Same constructor, parameter (``scale``) and defaults (``epsilon=1e-6``);
    the restrictions of :class:`LayerNorm` apply.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> import normcore.flax
    >>> rms = normcore.flax.RMSNorm(2, rngs=nnx.Rngs(0))
    >>> [round(v, 4) for v in rms(jnp.array([[3.0, 4.0]]))[0].tolist()]
    [0.8485, 1.1314]
    """

    def __init__(self, num_features: int, **kwargs: Any) -> None:
        _check_layer_options(kwargs, "RMSNorm")
        super().__init__(num_features, **kwargs)

    def __call__(self, x, *, mask=None):
        """Divide ``x`` by its root mean square over ``reduction_axes``, then scale."""
        _no_mask(mask, "RMSNorm")
        x, scale = self.promote_dtype((x, _value(self.scale)), dtype=self.dtype)
        axes = _axes(self.reduction_axes, x.ndim)
        (scale,) = _feature_shaped(x, axes, scale)
        return rms_norm(x, scale, axis=axes, eps=self.epsilon)


class GroupNorm(nnx.GroupNorm):
    """Drop-in for ``flax.nnx.GroupNorm`` computed by :func:`normcore.group_norm`.

    Same constructor (``num_groups`` or ``group_size``), parameters and
    defaults (``num_groups=32``, ``epsilon=1e-6``); channels are the last
    axis and statistics are per example over every other axis but the first,
    as Flax's default. ``reduction_axes``, ``axis_name``/``axis_index_groups``
    and ``mask`` are not supported and raise ``ValueError``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> import normcore.flax
    >>> gn = normcore.flax.GroupNorm(4, num_groups=2, rngs=nnx.Rngs(0))
    >>> gn(jnp.arange(8.0).reshape(1, 2, 4)).shape
    (1, 2, 4)
    """

    def __init__(self, num_features: int, num_groups: int | None = 32, *args: Any, **kwargs):
        for name in ("reduction_axes", "axis_name", "axis_index_groups"):
            _refuse(name, kwargs.get(name), "GroupNorm", "statistics are per example, "
                    "over every axis but the first")  # fmt: skip
        super().__init__(num_features, num_groups, *args, **kwargs)

    def __call__(self, x, *, mask=None):
        """Normalize each example over groups of its (last-axis) channels."""
        _no_mask(mask, "GroupNorm")
        x, scale, bias = self.promote_dtype(
            (x, _value(self.scale), _value(self.bias)), dtype=self.dtype
        )
        return group_norm(x, self.num_groups, scale, bias, axis=-1, eps=self.epsilon)


class BatchNorm(nnx.BatchNorm):
    """Drop-in for ``flax.nnx.BatchNorm`` computed by :func:`normcore.batch_norm_train`.

    Same constructor, parameters (``scale``, ``bias``), batch statistics
    (``mean``, ``var``) and defaults (``momentum=0.99``: ``new = momentum *
    old + (1 - momentum) * batch`` with the biased batch variance,
    ``epsilon=1e-5``, ``axis=-1``), and the same ``use_running_average``
    rules. With ``axis_name`` the statistics are those of the whole batch
    spread over the mapped axis (:class:`normcore.sync.JaxAxis`: exact
    ``(count, mean, M2)`` merged over the members, and gradients through
    them). Differences: a batch with NaN or infinite statistics leaves the
    running statistics unchanged (Flax stores the NaN); a tuple ``axis``,
    ``axis_index_groups`` and ``mask`` are not supported (``ValueError``).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> import normcore.flax
    >>> bn = normcore.flax.BatchNorm(2, rngs=nnx.Rngs(0))
    >>> y = bn(jnp.array([[1.0, 10.0], [3.0, 30.0]]))
    >>> [round(v, 4) for v in bn.mean[...].tolist()]  # 0.01 * the batch mean
    [0.02, 0.2]
    """

    def __init__(self, num_features: int, **kwargs: Any) -> None:
        axis = kwargs.get("axis", -1)
        if not isinstance(axis, int):
            raise ValueError(
                f"normcore.flax.BatchNorm needs one feature axis (an int), got axis={axis!r}; "
                "use flax.nnx.BatchNorm for several"
            )
        _refuse("axis_index_groups", kwargs.get("axis_index_groups"), "BatchNorm",
                "the whole mapped axis shares the batch")  # fmt: skip
        super().__init__(num_features, **kwargs)

    def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
        """Normalize with batch statistics and update the running ones, or use the running ones."""
        _no_mask(mask, "BatchNorm")
        if use_running_average is None:
            use_running_average = self.use_running_average
        if use_running_average is None:
            raise ValueError(
                "No use_running_average was given to normcore.flax.BatchNorm: pass it to the "
                "constructor or to the call (True: running statistics; False: batch ones)"
            )
        x, mean, var, scale, bias = self.promote_dtype(
            (x, self.mean[...], self.var[...], _value(self.scale), _value(self.bias)),
            dtype=self.dtype,
        )
        if use_running_average:
            return batch_norm(x, scale, bias, axis=self.axis, eps=self.epsilon, mean=mean, var=var)
        running = RunningStats(mean, var, jnp.zeros((), jnp.int32))  # the count is unused
        y, new = batch_norm_train(
            x,
            running,
            scale,
            bias,
            axis=self.axis,
            eps=self.epsilon,
            momentum=self.momentum,
            convention="keras",
            sync=None if self.axis_name is None else JaxAxis(self.axis_name),
        )
        # running statistics carry no gradient (as Flax's, for array references)
        self.mean[...] = jax.lax.stop_gradient(new.mean).astype(self.mean[...].dtype)
        self.var[...] = jax.lax.stop_gradient(new.var).astype(self.var[...].dtype)
        return y

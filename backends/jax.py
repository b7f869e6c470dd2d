"""Adapter for JAX arrays: concrete arrays and the tracers of ``jit``, ``grad`` and ``vmap``.

The reference path runs on JAX unchanged: ``jax.numpy`` implements the Array
API, and every operation of normcore's core is a ``jax.numpy`` call, so
``jax.jit``, ``jax.grad`` and ``jax.vmap`` trace through it. This adapter adds
what differs for JAX:

* ownership of tracers as well as concrete arrays (both are ``jax.Array``);
  a tracer has no device, which the core treats as "wherever the others are";
* float64 exists only with ``jax_enable_x64``: asking for float64 parameters
  or state without it is a ``TypeError`` naming the setting, never the silent
  downcast to float32 that ``jax.numpy`` would make;
* its devices, for ``normcore info`` and ``normcore check``;
* fast paths that are the reference primitive compiled whole by ``jax.jit``
  (one program per layout, shape and dtype, cached by JAX). Eagerly, JAX runs
  and, for every new shape, compiles each operation on its own: about fifteen
  small programs for one layer norm. Inside a caller's ``jit`` the inner
  ``jit`` is inlined: the numerics are the reference's, fused by XLA;
* reverse-mode differentiation by normcore's closed-form backward: the forward
  of batch statistics is a ``jax.custom_vjp`` whose backward is the reference
  backward, so ``grad`` keeps only the inputs (``x``, ``gain``, ``bias``)
  instead of the forward's intermediates, as the other adapters' backward
  kernels do. A ``custom_vjp`` has no forward mode: ``jax.jvp``,
  ``jax.jacfwd`` and ``jax.hessian`` run inside ``normcore.reference_path()``,
  where JAX differentiates the reference's operations themselves.

jax is imported only once a JAX array reaches normcore (by then the user has
imported it) or when ``normcore info``/``check`` ask for its devices.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

from normcore.adapter import (
    Adapter,
    Layout,
    reference_normalize,
    reference_normalize_backward,
)

__all__ = ["JaxAdapter", "adapter"]


class JaxAdapter(Adapter):
    """JAX: arrays and tracers on CPU, GPU or TPU devices; the reference path, traceable."""

    name = "jax"
    library = "jax"
    install_hint = 'pip install "normcore[jax]" (CPU jax and jaxlib, pinned)'

    def owns(self, x: Any) -> bool:
        # Tracers (jit, grad, vmap) are instances of jax.Array too, each tracer type
        # asked once (the registry caches the answer by type).
        return isinstance(x, sys.modules["jax"].Array)

    def namespace(self) -> Any:
        """``jax.numpy``, JAX's Array API namespace (the top-level ``jax`` module is not one)."""
        import jax.numpy

        return jax.numpy

    def devices(self) -> list[str]:
        import jax

        return [f"{d} ({d.device_kind})" for d in jax.devices()]

    def check_devices(self) -> list[Any]:
        import jax

        return list(jax.devices())

    def resolve_device(self, device: Any) -> Any:
        """A device name (``"cpu"``, ``"cpu:0"``, ``"gpu:1"``: what ``str(device)`` gives)."""
        if not isinstance(device, str):
            return device
        import jax

        platform, _, index = device.partition(":")
        try:
            return jax.devices(platform)[int(index or 0)]
        except (RuntimeError, ValueError, IndexError):  # unknown platform, index or format
            known = ", ".join(f"{d}" for d in jax.devices())
            raise ValueError(
                f"device {device!r} is not a JAX device; JAX has: {known} (pass a name such as "
                "'cpu' or 'cpu:0', or a jax.Device)"
            ) from None

    def check_dtype(self, xp: Any, dtype: Any) -> None:
        """float64 needs ``jax_enable_x64``: without it JAX would silently make float32."""
        import jax

        if xp.finfo(dtype).bits == 64 and not jax.config.read("jax_enable_x64"):
            raise TypeError(
                "dtype float64 needs JAX's 64-bit mode, which is off: enable it with "
                "jax.config.update('jax_enable_x64', True) (or JAX_ENABLE_X64=1) before "
                "creating arrays, or use dtype float32 (JAX would otherwise silently make "
                "float32 arrays)"
            )

    def normalize(self, xp, x, gain, bias, layout, *, need_stats=False):
        """The reference forward as one compiled program (``need_stats`` changes nothing).

        With batch statistics, differentiated by the reference backward
        (:func:`_closed_form`); given statistics are differentiated as they
        are computed (one product and one sum: nothing to save).
        """
        if layout.stats is None:
            return _closed_form(self, _key(layout))(x, gain, bias)
        return _compiled(self, "forward", _key(layout))(x, gain, bias, layout.stats)

    def normalize_backward(self, xp, dy, x, gain, bias, layout):
        """The reference backward as one compiled program."""
        return _compiled(self, "backward", _key(layout))(dy, x, gain, bias, layout.stats)


def _key(layout: Layout) -> tuple:
    """What a compiled program depends on besides its arrays (a Layout hashes by identity)."""
    return layout.reduce_axes, layout.param_axes, layout.center, layout.eps, layout.correction


@functools.lru_cache(maxsize=512)
def _compiled(adapter: JaxAdapter, direction: str, key: tuple) -> Any:
    """``jax.jit`` of the reference forward or backward for one layout (its stats are inputs).

    ``jax.jit`` itself compiles once per shape, dtype and which of gain/bias/
    stats are None (None is an empty pytree); this cache keeps one jitted
    function per layout so that its compilations are found again.
    """
    import jax
    import jax.numpy as jnp

    reduce_axes, param_axes, center, eps, correction = key

    def layout(stats):
        return Layout(reduce_axes, param_axes, center, eps, stats, correction)

    if direction == "forward":

        def run(x, gain, bias, stats):
            return reference_normalize(adapter, jnp, x, gain, bias, layout(stats))

    else:

        def run(dy, x, gain, bias, stats):
            return reference_normalize_backward(adapter, jnp, dy, x, gain, bias, layout(stats))

    return jax.jit(run)


adapter = JaxAdapter()


@functools.lru_cache(maxsize=512)
def _closed_form(adapter: JaxAdapter, key: tuple) -> Any:
    """The jitted forward of batch statistics whose reverse mode is the reference backward.

    Cotangents of ``y`` take :func:`reference_normalize_backward`, which
    recomputes the statistics from ``x``: the residuals are the inputs only.
    The statistics ``mean``/``var`` are outputs too (for running averages);
    their cotangents are symbolic zeros unless a caller differentiates
    through them, which then adds JAX's derivative of the reference's own
    statistics (computed only in that case).
    """
    import jax
    import jax.numpy as jnp

    layout = Layout(*key[:4], None, key[4])

    @jax.custom_vjp
    def forward(x, gain, bias):
        return reference_normalize(adapter, jnp, x, gain, bias, layout)

    def forward_saving_inputs(x, gain, bias):
        x, gain, bias = (None if p is None else p.value for p in (x, gain, bias))
        return forward(x, gain, bias), (x, gain, bias)

    def backward(saved, cotangent):
        x, gain, bias = saved
        zero = jax.custom_derivatives.SymbolicZero
        if isinstance(cotangent.y, zero):
            dx = jnp.zeros_like(x)
            dgain = None if gain is None else jnp.zeros_like(gain)
            dbias = None if bias is None else jnp.zeros_like(bias)
        else:
            dx, dgain, dbias = reference_normalize_backward(
                adapter, jnp, cotangent.y, x, gain, bias, layout
            )
        through_stats = [
            (i, c)
            for i, c in ((1, cotangent.mean), (2, cotangent.var))
            if c is not None and not isinstance(c, zero)
        ]
        if through_stats:
            _, pull = jax.vjp(
                lambda x: [
                    reference_normalize(adapter, jnp, x, None, None, layout)[i]
                    for i, _ in through_stats
                ],
                x,
            )
            (dstats,) = pull([c for _, c in through_stats])
            dx = dx + dstats.astype(dx.dtype)
        return dx, dgain, dbias

    forward.defvjp(forward_saving_inputs, backward, symbolic_zeros=True)
    return jax.jit(forward)

"""The JAX rows of ``python -m normcore bench``: normcore on JAX arrays against Flax and jnp.

Each figure is normcore's time over a competitor's, medians of calls timed in
turns in one process, every call finished with ``jax.block_until_ready``:

* ``vs flax``: the ``flax.nnx`` module normcore replaces (``LayerNorm``,
  ``BatchNorm`` in training), with Flax's defaults: its layer-norm and
  batch-norm variance is ``E[x**2] - E[x]**2`` (``use_fast_variance=True``),
  one pass over the data fewer than normcore's two-pass statistics;
* ``vs flax 2-pass``: the same module with ``use_fast_variance=False``, the
  variance normcore and Flax agree on to 1e-12 in float64 (ungraded);
* ``vs jnp``: ``jax.nn.standardize`` times the gain plus the bias, jitted (the
  ``jit`` rows), or the same expression in ``jax.numpy`` called eagerly (the
  ``eager`` row, against normcore called eagerly).

The sizes are issue #15's: float32, ``elements / 4`` values (2**22 for the
full run) at each D.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

from .bench import EPS, Figure, Plan, Row, median_times

__all__ = ["COLUMNS", "rows"]

COLUMNS = ("vs flax", "vs flax 2-pass", "vs jnp")


def _finished(function: Any, *args: Any) -> Any:
    import jax

    return lambda: jax.block_until_ready(function(*args))


def _row(method: str, layout: str, d: int, direction: str, calls: dict, plan: Plan,
         limits: dict) -> Row:  # fmt: skip
    times = median_times(calls, plan)
    row = Row(method, layout, d, "jax", direction, time_s=times["ours"])
    for column, name in zip(COLUMNS, ("flax", "flax 2-pass", "jnp"), strict=True):
        if name in times:
            row.figures[column] = Figure(times["ours"] / times[name], limits.get(name))
    return row


def _libraries() -> tuple[Any, Any, Any]:
    """``(jax, jax.numpy, flax.nnx or None)``; ImportError without jax."""
    import jax
    import jax.numpy as jnp

    try:
        from flax import nnx
    except ImportError:
        nnx = None
    return jax, jnp, nnx


def rows(plan: Plan, normcore: Any) -> Iterator[Row]:
    """The JAX rows, or one row saying what is missing (jax, or flax for the Flax columns)."""
    try:
        jax, jnp, nnx = _libraries()
    except ImportError:
        yield Row("layer_norm", "", 0, "jax", "", note="jax is not installed (normcore[jax])")
        return
    elements = plan.elements // 4
    for d in plan.dims:
        yield from _layer_norm_rows(plan, normcore, jax, jnp, nnx, (elements // d, d))
    if nnx is not None:
        yield _batch_norm_row(plan, normcore, jax, jnp, nnx, elements)


def _layer_norm_rows(plan: Plan, normcore: Any, jax: Any, jnp: Any, nnx: Any, shape: tuple):
    d = shape[-1]
    x = jax.random.normal(jax.random.key(0), shape, jnp.float32) * 2.0 + 3.0
    dy = jax.random.normal(jax.random.key(1), shape, jnp.float32)
    gain = 1.0 + 0.1 * jax.random.normal(jax.random.key(2), (d,), jnp.float32)
    bias = 0.1 * jax.random.normal(jax.random.key(3), (d,), jnp.float32)

    def ours(x, gain, bias):
        return normcore.layer_norm(x, gain, bias, eps=EPS)

    def standardized(x, gain, bias):
        return jax.nn.standardize(x, axis=-1, epsilon=EPS) * gain + bias

    forward = {"ours": ours, "jnp": standardized}
    if nnx is not None:
        for name, fast in (("flax", True), ("flax 2-pass", False)):
            module = nnx.LayerNorm(d, epsilon=EPS, use_fast_variance=fast, rngs=nnx.Rngs(0))
            forward[name] = functools.partial(_flax_layer_norm, nnx, nnx.split(module)[0])
    args = (x, gain, bias)
    jitted = {k: _finished(jax.jit(f), *args) for k, f in forward.items()}
    yield _row("layer_norm", "jit", d, "forward", jitted, plan, {"flax": 1.05, "jnp": 1.05})
    grads = {
        k: _finished(jax.jit(jax.grad(functools.partial(_loss, f), argnums=(0, 1, 2))), *args, dy)
        for k, f in forward.items()
    }
    yield _row("layer_norm", "jit", d, "grad", grads, plan, {"flax": 1.10})
    eager = {"ours": _finished(ours, *args), "jnp": _finished(_eager_layer_norm, *args)}
    yield _row("layer_norm", "eager", d, "forward", eager, plan, {"jnp": 1.20})


def _flax_layer_norm(nnx: Any, graphdef: Any, x: Any, gain: Any, bias: Any) -> Any:
    state = nnx.State({"scale": nnx.Param(gain), "bias": nnx.Param(bias)})
    return nnx.merge(graphdef, state)(x)


def _loss(forward: Any, x: Any, gain: Any, bias: Any, dy: Any) -> Any:
    import jax.numpy as jnp

    return jnp.vdot(forward(x, gain, bias), dy)


def _eager_layer_norm(x: Any, gain: Any, bias: Any) -> Any:
    """Layer norm in jax.numpy as a user writes it (two-pass variance), run op by op."""
    import jax.numpy as jnp

    mean = jnp.mean(x, axis=-1, keepdims=True)
    centered = x - mean
    var = jnp.mean(centered * centered, axis=-1, keepdims=True)
    return centered / jnp.sqrt(var + EPS) * gain + bias


def _batch_norm_row(plan: Plan, normcore: Any, jax: Any, jnp: Any, nnx: Any, elements: int):
    """One jitted training step (output and new running statistics), channels last."""
    c = plan.dims[0]
    x = jax.random.normal(jax.random.key(4), (elements // c, c), jnp.float32) * 2.0 + 3.0
    gain, bias = jnp.ones(c), jnp.zeros(c)
    running = normcore.RunningStats(jnp.zeros(c), jnp.ones(c), jnp.asarray(0))

    def ours(x, running):
        return normcore.batch_norm_train(x, running, gain, bias, axis=-1, eps=EPS,
                                         momentum=0.01, convention="keras")  # fmt: skip

    calls = {"ours": _finished(jax.jit(ours), x, running)}
    for name, fast in (("flax", True), ("flax 2-pass", False)):
        module = nnx.BatchNorm(c, epsilon=EPS, use_fast_variance=fast, rngs=nnx.Rngs(0))
        graphdef, state = nnx.split(module)

        def step(x, state, graphdef=graphdef):
            module = nnx.merge(graphdef, state)
            y = module(x, use_running_average=False)
            return y, nnx.state(module)

        calls[name] = _finished(jax.jit(step), x, state)
    return _row("batch_norm", "N x C, jit", c, "train", calls, plan, {"flax": 1.10})

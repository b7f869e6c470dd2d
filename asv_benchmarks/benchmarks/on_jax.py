"""normcore on JAX arrays against the Flax modules it replaces and hand-written jax.numpy.

Not named ``jax.py``, which would shadow the library. Parametrized over
``impl``: ``normcore``; ``flax`` (``flax.nnx.LayerNorm``/``BatchNorm`` with
Flax's default ``E[x**2] - E[x]**2`` variance); ``flax-2pass`` (the same with
``use_fast_variance=False``, the two-pass variance normcore computes);
``jnp`` (``jax.nn.standardize`` times the gain plus the bias; the eager
benchmark: the two-pass formula in ``jax.numpy``, op by op). Every timed call
ends with ``jax.block_until_ready``. jax is imported in ``setup``, after asv
forked the benchmark's process (JAX's threads must not be forked), and a
machine without jax or flax skips.
"""

from .common import EPS, SkipNotImplemented

ELEMENTS = 2**20  # as the other files: 4 MiB in float32
DIMS = [256, 1024, 4096]


def _imports():
    try:
        import jax
        import jax.numpy as jnp
        from flax import nnx
    except ImportError as error:
        raise SkipNotImplemented(f"needs jax and flax (normcore[flax]): {error}") from None
    return jax, jnp, nnx


def _layer_norms(jax, jnp, nnx, d):
    import normcore

    def flax(fast):
        graphdef = nnx.split(nnx.LayerNorm(d, epsilon=EPS, use_fast_variance=fast,
                                           rngs=nnx.Rngs(0)))[0]  # fmt: skip

        def call(x, gain, bias):
            state = nnx.State({"scale": nnx.Param(gain), "bias": nnx.Param(bias)})
            return nnx.merge(graphdef, state)(x)

        return call

    return {
        "normcore": lambda x, gain, bias: normcore.layer_norm(x, gain, bias, eps=EPS),
        "flax": flax(True),
        "flax-2pass": flax(False),
        "jnp": lambda x, g, b: jax.nn.standardize(x, axis=-1, epsilon=EPS) * g + b,
    }


def _eager_jnp(x, gain, bias):
    import jax.numpy as jnp

    centered = x - jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(centered * centered, axis=-1, keepdims=True)
    return centered / jnp.sqrt(var + EPS) * gain + bias


class JaxLayerNorm:
    """``layer_norm`` of float32 ``N x D`` data: jitted forward, jitted grad, eager forward."""

    param_names = ["impl", "D"]
    params = [["normcore", "flax", "flax-2pass", "jnp"], DIMS]
    timeout = 300

    def setup(self, impl, d):
        jax, jnp, nnx = _imports()
        shape = (ELEMENTS // d, d)
        self.block = jax.block_until_ready
        self.args = (
            jax.random.normal(jax.random.key(0), shape, jnp.float32) * 2.0 + 3.0,
            jnp.ones(d, jnp.float32),
            jnp.zeros(d, jnp.float32),
        )
        dy = jax.random.normal(jax.random.key(1), shape, jnp.float32)
        forward = _layer_norms(jax, jnp, nnx, d)[impl]
        self.jitted = jax.jit(forward)
        self.grad = jax.jit(jax.grad(lambda *a: jnp.vdot(forward(*a), dy), argnums=(0, 1, 2)))
        self.eager = {"normcore": forward, "jnp": _eager_jnp}.get(impl)
        for call in (self.jitted, self.grad, self.eager):  # compile outside the timing
            if call is not None:
                self.block(call(*self.args))

    def time_jit_forward(self, impl, d):
        self.block(self.jitted(*self.args))

    def time_jit_grad(self, impl, d):
        self.block(self.grad(*self.args))

    def time_eager_forward(self, impl, d):
        if self.eager is None:
            raise SkipNotImplemented("eager: normcore against jax.numpy op by op only")
        self.block(self.eager(*self.args))


class JaxBatchNormTrain:
    """One jitted training-mode batch norm (output and new running statistics), N x C."""

    param_names = ["impl", "C"]
    params = [["normcore", "flax", "flax-2pass"], [64, 256]]
    timeout = 300

    def setup(self, impl, c):
        jax, jnp, nnx = _imports()
        import normcore

        x = jax.random.normal(jax.random.key(0), (ELEMENTS // c, c), jnp.float32) * 2.0 + 3.0
        self.block = jax.block_until_ready
        if impl == "normcore":
            gain, bias = jnp.ones(c), jnp.zeros(c)
            state = normcore.RunningStats(jnp.zeros(c), jnp.ones(c), jnp.asarray(0))

            def step(x, state):
                return normcore.batch_norm_train(x, state, gain, bias, axis=-1, eps=EPS,
                                                 momentum=0.01, convention="keras")  # fmt: skip
        else:
            module = nnx.BatchNorm(c, epsilon=EPS, use_fast_variance=impl == "flax",
                                   rngs=nnx.Rngs(0))  # fmt: skip
            graphdef, state = nnx.split(module)

            def step(x, state):
                module = nnx.merge(graphdef, state)
                return module(x, use_running_average=False), nnx.state(module)

        self.step, self.args = jax.jit(step), (x, state)
        self.block(self.step(*self.args))

    def time_train_step(self, impl, c):
        self.block(self.step(*self.args))

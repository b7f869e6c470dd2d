"""normcore.flax against flax.nnx's own modules, in float64: outputs, gradients, statistics.

Expected values are Flax's (``use_fast_variance=False``: its two-pass
variance), computed by the ``flax.nnx`` module that each drop-in replaces,
built with the same arguments and the same parameters.
"""

from __future__ import annotations

import numpy as np
import pytest

flax = pytest.importorskip("flax", reason="flax is not installed (the test extra has it)")
jax = pytest.importorskip("jax")

import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

import normcore  # noqa: E402
import normcore.flax as nf  # noqa: E402

TOL = 1e-12
# flax.nnx.BatchNorm stores its float64 update into its float32 statistics (Flax's own code)
pytestmark = pytest.mark.filterwarnings("ignore:scatter inputs have incompatible types")


@pytest.fixture(autouse=True)
def x64():
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


def _pair(name, *args, **kwargs):
    """normcore's module and Flax's, same arguments, parameters randomized identically."""
    kwargs.setdefault("param_dtype", jnp.float64)
    ours = getattr(nf, name)(*args, rngs=nnx.Rngs(0), **kwargs)
    theirs = getattr(nnx, name)(*args, rngs=nnx.Rngs(0), use_fast_variance=False, **kwargs)
    rng = np.random.default_rng(1)
    for module in (ours, theirs):
        for attr in ("scale", "bias"):
            variable = getattr(module, attr, None)
            if variable is not None:
                variable[...] = jnp.asarray(
                    np.random.default_rng(hash(attr) % 2**32).normal(size=variable[...].shape)
                )
    del rng
    return ours, theirs


def _x(shape, seed=0, mean=3.0):
    return jnp.asarray(np.random.default_rng(seed).normal(mean, 2.0, size=shape))


def _loss_and_grads(module, x, *call_args):
    w = jnp.asarray(np.random.default_rng(7).normal(size=x.shape))

    def loss(module, x):
        return jnp.sum(module(x, *call_args) * w)

    return nnx.grad(loss, argnums=(0, 1))(module, x)


def _assert_close(got, want, tol=TOL):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=tol)


CASES = [
    ("LayerNorm", (6,), {}, (4, 6)),
    ("LayerNorm", (6,), {"use_bias": False, "epsilon": 1e-3}, (2, 3, 6)),
    ("LayerNorm", (30,), {"reduction_axes": (-2, -1), "feature_axes": (-2, -1)}, (3, 5, 6)),
    ("RMSNorm", (6,), {}, (4, 6)),
    ("RMSNorm", (6,), {"use_scale": False}, (2, 3, 6)),
    ("GroupNorm", (8,), {"num_groups": 4}, (3, 5, 8)),
    ("GroupNorm", (8,), {"num_groups": None, "group_size": 4, "use_bias": False}, (2, 3, 4, 8)),
]


@pytest.mark.parametrize(("name", "args", "kwargs", "shape"), CASES)
def test_layer_modules_match_flax(name, args, kwargs, shape):
    ours, theirs = _pair(name, *args, **kwargs)
    x = _x(shape)
    _assert_close(ours(x), theirs(x))
    (ours_grads, ours_dx), (theirs_grads, theirs_dx) = (
        _loss_and_grads(ours, x),
        _loss_and_grads(theirs, x),
    )
    _assert_close(ours_dx, theirs_dx)
    ours_state, theirs_state = nnx.state(ours_grads), nnx.state(theirs_grads)
    assert jax.tree.structure(ours_state) == jax.tree.structure(theirs_state)
    for got, want in zip(jax.tree.leaves(ours_state), jax.tree.leaves(theirs_state), strict=True):
        _assert_close(got, want)


@pytest.mark.parametrize("momentum", [0.99, 0.5])
@pytest.mark.parametrize(("shape", "axis"), [((16, 5), -1), ((4, 3, 3, 5), -1), ((4, 5, 3), 1)])
def test_batch_norm_matches_flax_in_training_and_inference(momentum, shape, axis):
    ours, theirs = _pair("BatchNorm", 5, momentum=momentum, axis=axis)
    for step in range(3):
        x = _x(shape, seed=step, mean=10.0)
        _assert_close(ours(x, use_running_average=False), theirs(x, use_running_average=False))
        # Flax keeps batch statistics in float32 whatever param_dtype is: both blend in
        # float64 and round once, where the blend's weight (momentum vs 1 - (1 - momentum))
        # may round the other way: a float32 ulp per step at most
        for attr in ("mean", "var"):
            got, want = getattr(ours, attr)[...], getattr(theirs, attr)[...]
            assert got.dtype == want.dtype == jnp.float32
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=4e-7, atol=0)
    for attr in ("mean", "var"):  # inference from the very same statistics
        getattr(ours, attr)[...] = getattr(theirs, attr)[...]
    x = _x(shape, seed=9)
    _assert_close(ours(x, use_running_average=True), theirs(x, use_running_average=True))
    # gradients through the batch statistics (training) and through fixed ones (inference)
    for use_running in (False, True):
        for attr in ("mean", "var"):  # a training call below updated both: align again
            getattr(ours, attr)[...] = getattr(theirs, attr)[...]
        (ours_g, ours_dx), (theirs_g, theirs_dx) = (
            _loss_and_grads(ours, x, use_running),
            _loss_and_grads(theirs, x, use_running),
        )
        _assert_close(ours_dx, theirs_dx)
        for attr in ("scale", "bias"):
            _assert_close(getattr(ours_g, attr)[...], getattr(theirs_g, attr)[...])
    # the same state: names, shapes, and values after the same training
    ours_state, theirs_state = nnx.state(ours), nnx.state(theirs)
    assert jax.tree.structure(ours_state) == jax.tree.structure(theirs_state)


def test_a_jitted_optax_training_step_matches_flax():
    optax = pytest.importorskip("optax")

    def make(namespace):
        class Net(nnx.Module):
            def __init__(self, rngs):
                self.linear = nnx.Linear(4, 6, rngs=rngs, param_dtype=jnp.float64)
                self.bn = namespace.BatchNorm(6, rngs=rngs, param_dtype=jnp.float64)
                self.ln = namespace.LayerNorm(6, rngs=rngs, param_dtype=jnp.float64)
                self.out = nnx.Linear(6, 1, rngs=rngs, param_dtype=jnp.float64)

            def __call__(self, x):
                return self.out(self.ln(nnx.relu(self.bn(self.linear(x)))))

        return Net(nnx.Rngs(0))

    results = []
    for namespace in (nf, nnx):
        net = make(namespace)
        if namespace is nnx:  # Flax's two-pass variance, as normcore's
            net.bn.use_fast_variance = net.ln.use_fast_variance = False
        net.train()
        # SGD, not Adam: Adam rescales the round-off-sized gradient of the bias before a
        # batch norm (mathematically zero) into steps of the learning rate
        optimizer = nnx.Optimizer(net, optax.sgd(0.05, momentum=0.9), wrt=nnx.Param)

        @nnx.jit
        def step(net, optimizer, x, y):
            def loss(net):
                return jnp.mean((net(x) - y) ** 2)

            value, grads = nnx.value_and_grad(loss)(net)
            optimizer.update(net, grads)
            return value

        losses = []
        for i in range(5):
            x = _x((16, 4), seed=i)
            losses.append(step(net, optimizer, x, jnp.sum(x, axis=1, keepdims=True)))
        results.append((np.asarray(losses), nnx.state(net)))
    (ours_losses, ours_state), (theirs_losses, theirs_state) = results
    _assert_close(ours_losses, theirs_losses, 1e-10)
    for got, want in zip(jax.tree.leaves(ours_state), jax.tree.leaves(theirs_state), strict=True):
        assert got.dtype == want.dtype
        if got.dtype == jnp.float32:  # Flax's batch statistics: rounded to float32 each step
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-9)
        else:
            _assert_close(got, want, 1e-10)


def test_batch_norm_with_axis_name_uses_the_whole_batch():
    """Under vmap over parts of a batch, the statistics are the whole batch's (exactly)."""
    bn = nf.BatchNorm(3, axis_name="parts", rngs=nnx.Rngs(0), param_dtype=jnp.float64)
    parts = _x((4, 5, 3), mean=7.0)  # 4 members of 5 examples
    state = nnx.state(bn)
    graphdef = nnx.graphdef(bn)

    def member(part, state):
        module = nnx.merge(graphdef, state)
        y = module(part, use_running_average=False)
        return y, module.mean[...], module.var[...]

    y, mean, var = jax.vmap(member, in_axes=(0, None), axis_name="parts")(parts, state)
    whole = parts.reshape(20, 3)
    want = normcore.batch_norm(np.asarray(whole), axis=-1)
    _assert_close(y.reshape(20, 3), want)
    batch_mean, batch_var = np.asarray(whole).mean(0), np.asarray(whole).var(0)
    for i in range(4):  # every member stores the same global statistics, rounded to float32
        for got, want in ((mean[i], 0.01 * batch_mean), (var[i], 0.99 + 0.01 * batch_var)):
            np.testing.assert_allclose(np.asarray(got), want, rtol=6e-8, atol=0)
        assert np.array_equal(mean[i], mean[0]) and np.array_equal(var[i], var[0])


def test_drop_ins_are_flax_modules_with_flax_names():
    for name in ("LayerNorm", "RMSNorm", "GroupNorm", "BatchNorm"):
        ours, theirs = _pair(name, 8, **({"num_groups": 4} if name == "GroupNorm" else {}))
        assert isinstance(ours, getattr(nnx, name))
        ours_state = jax.tree.map(jnp.shape, nnx.state(ours))
        theirs_state = jax.tree.map(jnp.shape, nnx.state(theirs))
        assert ours_state == theirs_state


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: nf.LayerNorm(4, reduction_axes=(1, 2), rngs=nnx.Rngs(0)), "feature_axes equal"),
        (lambda: nf.LayerNorm(4, axis_name="i", rngs=nnx.Rngs(0)), "axis_name='i'"),
        (lambda: nf.GroupNorm(4, 2, reduction_axes=(1,), rngs=nnx.Rngs(0)), "reduction_axes"),
        (lambda: nf.BatchNorm(4, axis=(1, 2), rngs=nnx.Rngs(0)), "one feature axis"),
    ],
)
def test_unsupported_options_are_refused_at_construction(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_unsupported_call_options_are_refused():
    ln = nf.LayerNorm(4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="mask"):
        ln(jnp.ones((2, 4)), mask=jnp.ones((2, 4), bool))
    bn = nf.BatchNorm(4, rngs=nnx.Rngs(0), use_running_average=None)
    with pytest.raises(ValueError, match="use_running_average"):
        bn(jnp.ones((2, 4)))


# -- the layer-normalized LSTM cell ----------------------------------------------
def _flax_ln(a, scale, bias):
    """Flax's own layer norm (linen, applied functionally), two-pass, eps as the cell's."""
    norm = flax.linen.LayerNorm(epsilon=1e-5, use_fast_variance=False)
    return norm.apply({"params": {"scale": scale, "bias": bias}}, a)


def _ln_lstm_sequence(p, xs, carry):
    """Ba et al.'s eqs. 20-22 with Flax's layer norms, over (batch, time, features)."""
    c, h = carry
    hs = []
    for t in range(xs.shape[1]):
        z = (
            _flax_ln(xs[:, t] @ p["dense_i"]["kernel"], **p["ln_i"])
            + _flax_ln(h @ p["dense_h"]["kernel"], **p["ln_h"])
            + p["dense_h"]["bias"]
        )
        i, f, g, o = jnp.split(z, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(_flax_ln(c, **p["ln_c"]))
        hs.append(h)
    return jnp.stack(hs, axis=1), (c, h)


def _cell_params(cell):
    """The cell's parameters as nested plain arrays, layer-norm ones randomized."""
    rng = np.random.default_rng(5)
    for norm in (cell.ln_i, cell.ln_h, cell.ln_c):
        for attr in ("scale", "bias"):
            variable = getattr(norm, attr)
            variable[...] = jnp.asarray(rng.normal(1.0 if attr == "scale" else 0.0, 0.3,
                                                   size=variable[...].shape))  # fmt: skip
    cell.dense_h.bias[...] = jnp.asarray(rng.normal(0.0, 0.3, size=cell.dense_h.bias[...].shape))
    return jax.tree.map(lambda v: v[...], nnx.to_pure_dict(nnx.state(cell, nnx.Param)))


def test_layer_norm_lstm_cell_matches_flax_layer_norms_through_nnx_rnn():
    """Outputs, final carry and gradients (parameters, inputs, initial carry) over 5 steps
    of ``flax.nnx.RNN``, against the cell written with Flax's layer norms."""
    cell = nf.LayerNormLSTMCell(3, 4, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    params = _cell_params(cell)
    rng = np.random.default_rng(9)
    xs = jnp.asarray(rng.normal(0.5, 2.0, size=(2, 5, 3)))
    carry = tuple(jnp.asarray(rng.normal(size=(2, 4))) for _ in range(2))
    w_hs, w_c, w_h = (jnp.asarray(rng.normal(size=s)) for s in ((2, 5, 4), (2, 4), (2, 4)))
    graphdef, _ = nnx.split(cell)

    def loss(run):
        def value(params, xs, carry):
            hs, (c, h) = run(params, xs, carry)
            return jnp.sum(hs * w_hs) + jnp.sum(c * w_c) + jnp.sum(h * w_h)

        return value

    def ours(params, xs, carry):
        layer = nnx.RNN(nnx.merge(graphdef, nnx.State(params)), return_carry=True)
        final, hs = layer(xs, initial_carry=carry)
        return hs, final

    got = jax.jit(ours)(params, xs, carry)
    want = _ln_lstm_sequence(params, xs, carry)
    jax.tree.map(_assert_close, got, want)
    got_grads = jax.jit(jax.grad(loss(ours), argnums=(0, 1, 2)))(params, xs, carry)
    want_grads = jax.grad(loss(_ln_lstm_sequence), argnums=(0, 1, 2))(params, xs, carry)
    jax.tree.map(_assert_close, got_grads, want_grads)


def test_layer_norm_lstm_cell_has_flax_cell_conventions():
    cell = nf.LayerNormLSTMCell(3, 4, rngs=nnx.Rngs(0))
    flax_cell = nnx.OptimizedLSTMCell(3, 4, rngs=nnx.Rngs(0))
    assert isinstance(cell, nnx.RNNCellBase)
    for name in ("dense_i", "dense_h"):  # same kernels, same initial values
        jax.tree.map(_assert_close, nnx.state(getattr(cell, name)),
                     nnx.state(getattr(flax_cell, name)))  # fmt: skip
    c, h = cell.initialize_carry((2, 7, 3))
    assert c.shape == h.shape == (2, 7, 4) and not jnp.any(c) and not jnp.any(h)
    (c, h), out = cell((c, h), jnp.ones((2, 7, 3), jnp.float32))  # several batch axes
    assert out.shape == (2, 7, 4) and out.dtype == jnp.float32 and out is h

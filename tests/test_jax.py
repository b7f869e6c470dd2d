"""normcore under JAX's transformations: jit, grad with respect to each argument, vmap.

The shared suite runs every ``backend`` test on JAX's concrete arrays (the
``jax`` row of the backend table). These tests pass *tracers*, alone and
mixed with concrete arrays, which have no device (array-api-compat reports
None for them): each failure listed in issue #15 has a test here. Expected
values come from the formulas written below in ``jax.numpy`` (float64,
independent of normcore) and JAX's own differentiation of them, or from the
float64 PyTorch references of the recurrent cells.
"""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

import normcore  # noqa: E402
from normcore.cli import main  # noqa: E402

TOL = {"rtol": 1e-10, "atol": 1e-10}


@pytest.fixture(autouse=True)
def x64():
    """float64 (JAX has it only with jax_enable_x64), on for each test of this file only."""
    with jax.enable_x64(True):
        yield


# -- float64 formulas in jax.numpy, written independently of normcore -----------
def _normalize(x, axes, eps, center=True):
    if center:
        mean = jnp.mean(x, axis=axes, keepdims=True)
        var = jnp.mean((x - mean) ** 2, axis=axes, keepdims=True)
        return (x - mean) / jnp.sqrt(var + eps)
    return x / jnp.sqrt(jnp.mean(x**2, axis=axes, keepdims=True) + eps)


def _channels(p, ndim):
    return p.reshape((1, -1) + (1,) * (ndim - 2))


def ref_layer_norm(x, gain, bias):
    return _normalize(x, -1, 1e-5) * gain + bias


def ref_rms_norm(x, gain, bias):
    return _normalize(x, -1, 1e-6, center=False) * gain + bias


def ref_batch_norm(x, gain, bias):
    axes = (0, *range(2, x.ndim))
    return _normalize(x, axes, 1e-5) * _channels(gain, x.ndim) + _channels(bias, x.ndim)


def ref_group_norm(x, gain, bias, groups=2):
    n, c = x.shape[:2]
    grouped = x.reshape((n, groups, c // groups, *x.shape[2:]))
    y = _normalize(grouped, tuple(range(2, grouped.ndim)), 1e-5).reshape(x.shape)
    return y * _channels(gain, x.ndim) + _channels(bias, x.ndim)


# normcore's function (rms_norm has no bias: it is added outside) and the reference, with
# the shapes of x (N, C, L for the channel methods) and of the parameters.
METHODS = {
    "layer_norm": (
        lambda x, g, b: normcore.layer_norm(x, g, b),
        ref_layer_norm,
        (5, 6),
        (6,),
    ),
    "rms_norm": (
        lambda x, g, b: normcore.rms_norm(x, g) + b,
        ref_rms_norm,
        (5, 6),
        (6,),
    ),
    "batch_norm": (
        lambda x, g, b: normcore.batch_norm(x, g, b),
        ref_batch_norm,
        (4, 3, 5),
        (3,),
    ),
    "group_norm": (
        lambda x, g, b: normcore.group_norm(x, 2, g, b),
        ref_group_norm,
        (3, 4, 5),
        (4,),
    ),
}


def _inputs(method, seed=1607):
    rng = np.random.default_rng(seed)
    _, _, shape, pshape = METHODS[method]
    x = jnp.asarray(rng.normal(0.5, 2.0, size=shape))
    gain = jnp.asarray(rng.normal(1.0, 0.3, size=pshape))
    bias = jnp.asarray(rng.normal(0.0, 0.3, size=pshape))
    dy = jnp.asarray(rng.normal(size=shape))
    return x, gain, bias, dy


def _close(got, want):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), **TOL)


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("wrt", [0, 1, 2], ids=["x", "gain", "bias"])
def test_grad_with_respect_to_each_argument_alone(method, wrt):
    """Only one argument is a tracer; the others are concrete arrays on the CPU device.

    Issue #15: ``jax.grad`` with respect to the gain only raised ``gain is on
    device None but x is on device cpu:0``.
    """
    fn, ref, _, _ = METHODS[method]
    x, gain, bias, dy = _inputs(method)
    got = jax.grad(lambda *a: jnp.sum(fn(*a) * dy), argnums=wrt)(x, gain, bias)
    want = jax.grad(lambda *a: jnp.sum(ref(*a) * dy), argnums=wrt)(x, gain, bias)
    assert got.dtype == jnp.float64 and got.shape == (x, gain, bias)[wrt].shape
    _close(got, want)


@pytest.mark.parametrize("method", list(METHODS))
def test_jit_closing_over_concrete_parameters(method):
    """x traced, gain and bias concrete (the usual jitted layer), then everything traced."""
    fn, ref, _, _ = METHODS[method]
    x, gain, bias, _ = _inputs(method)
    want = ref(x, gain, bias)
    _close(jax.jit(lambda a: fn(a, gain, bias))(x), want)
    _close(jax.jit(fn)(x, gain, bias), want)


@pytest.mark.parametrize("method", list(METHODS))
def test_jit_of_grad_with_respect_to_everything(method):
    fn, ref, _, _ = METHODS[method]
    x, gain, bias, dy = _inputs(method)
    got = jax.jit(jax.grad(lambda *a: jnp.sum(fn(*a) * dy), argnums=(0, 1, 2)))(x, gain, bias)
    want = jax.grad(lambda *a: jnp.sum(ref(*a) * dy), argnums=(0, 1, 2))(x, gain, bias)
    for g, w in zip(got, want, strict=True):
        _close(g, w)


# -- reverse mode by normcore's closed-form backward (a jax.custom_vjp) -----------
@pytest.mark.parametrize("method", list(METHODS))
def test_grad_saves_only_the_inputs(method, capsys):
    """``grad`` keeps ``x``, ``gain`` and ``bias``, not the forward's intermediates (#15).

    Under ``reference_path()`` JAX differentiates the reference's own
    operations, which saves centered copies of ``x``: the same check fails there.
    """
    from jax.ad_checkpoint import print_saved_residuals

    fn = METHODS[method][0]
    x, gain, bias, _ = _inputs(method)

    def size(line):  # "f64[3,2,2,5] output of ..."
        dims = line.split("]")[0].partition("[")[2]
        return int(np.prod([int(d) for d in dims.split(",") if d]))

    def intermediates_of_the_size_of_x():
        print_saved_residuals(fn, x, gain, bias)
        lines = capsys.readouterr().out.splitlines()
        # a reshape of x (group norm's groups) is x itself to XLA: no copy
        inputs = ("from the argument", "output of reshape from")
        return [r for r in lines if size(r) == x.size and not any(i in r for i in inputs)]

    assert intermediates_of_the_size_of_x() == []
    with normcore.reference_path():
        assert intermediates_of_the_size_of_x() != []


def test_grad_through_the_running_statistics():
    """The new running averages are outputs of the same ``custom_vjp``: their cotangents
    add the derivative of the batch statistics (torch's convention: momentum 0.1, the
    unbiased batch variance)."""
    x, gain, bias, dy = _inputs("batch_norm")
    rng = np.random.default_rng(11)
    w_mean, w_var = (jnp.asarray(rng.normal(size=3)) for _ in range(2))
    running = normcore.RunningStats(jnp.zeros(3), jnp.ones(3), jnp.asarray(0))

    def loss(x, gain, bias):
        y, new = normcore.batch_norm_train(x, running, gain, bias)
        return jnp.sum(y * dy) + jnp.sum(new.mean * w_mean) + jnp.sum(new.var * w_var)

    def ref(x, gain, bias):
        axes, count = (0, 2), x.shape[0] * x.shape[2]
        mean = jnp.mean(x, axis=axes)
        var = jnp.sum((x - _channels(mean, x.ndim)) ** 2, axis=axes) / (count - 1)
        stats = jnp.sum(0.1 * mean * w_mean) + jnp.sum((0.9 + 0.1 * var) * w_var)
        return jnp.sum(ref_batch_norm(x, gain, bias) * dy) + stats

    for wrt in ((0, 1, 2), (0,)):
        got = jax.jit(jax.grad(loss, argnums=wrt))(x, gain, bias)
        want = jax.grad(ref, argnums=wrt)(x, gain, bias)
        for g, w in zip(got, want, strict=True):
            _close(g, w)


def test_forward_mode_runs_inside_reference_path():
    """A ``custom_vjp`` has no forward mode; ``reference_path()`` differentiates the
    reference's operations, so ``jvp`` (and ``jacfwd``, ``hessian``) work there."""
    x, gain, bias, dy = _inputs("layer_norm")
    with pytest.raises(TypeError, match=r"forward-mode"):
        jax.jvp(lambda a: normcore.layer_norm(a, gain, bias), (x,), (dy,))
    with normcore.reference_path():
        _, got = jax.jvp(lambda a: normcore.layer_norm(a, gain, bias), (x,), (dy,))
        hessian = jax.hessian(lambda g: jnp.sum(normcore.layer_norm(x, g, bias) ** 3))(gain)
    _, want = jax.jvp(lambda a: ref_layer_norm(a, gain, bias), (x,), (dy,))
    _close(got, want)
    _close(hessian, jax.hessian(lambda g: jnp.sum(ref_layer_norm(x, g, bias) ** 3))(gain))


@pytest.mark.parametrize("method", list(METHODS))
def test_vmap_over_a_leading_axis_with_concrete_parameters(method):
    """vmap maps x only: each slice is one call, gain and bias stay concrete (issue #15)."""
    fn, ref, _, _ = METHODS[method]
    x, gain, bias, _ = _inputs(method)
    stacked = jnp.stack([x, 2.0 * x + 1.0, -x])
    got = jax.vmap(lambda a: fn(a, gain, bias))(stacked)
    want = jnp.stack([ref(a, gain, bias) for a in stacked])
    _close(got, want)


def test_vmap_over_rows_of_layer_norm_is_layer_norm_of_the_matrix():
    x, gain, bias, _ = _inputs("layer_norm")
    _close(
        jax.vmap(lambda row: normcore.layer_norm(row, gain, bias))(x), ref_layer_norm(x, gain, bias)
    )


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_grad_of_rnn_with_respect_to_its_params_under_jit(cell):
    """Traced params, concrete inputs and state (issue #15: the device check refused them)."""
    from _rnn_reference import reference

    rng = np.random.default_rng(7)
    steps, batch, inputs, hidden = 4, 3, 5, 6
    params = normcore.rnn_params(cell, inputs, hidden, like=jnp, dtype="float64")
    params = {k: v + jnp.asarray(0.1 * rng.normal(size=v.shape)) for k, v in params.items()}
    xs = rng.normal(size=(steps, batch, inputs))
    state0 = tuple(rng.normal(size=(batch, hidden)) for _ in range(2 if cell == "lstm" else 1))
    dhs = rng.normal(size=(steps, batch, hidden))
    dfinal = tuple(rng.normal(size=(batch, hidden)) for _ in state0)

    def loss(p):
        state = tuple(jnp.asarray(s) for s in state0)
        hs, final = normcore.rnn(
            jnp.asarray(xs), state if cell == "lstm" else state[0], p, cell=cell
        )
        final = final if cell == "lstm" else (final,)
        total = jnp.sum(hs * dhs)
        return total + sum(jnp.sum(f * d) for f, d in zip(final, dfinal, strict=True))

    got = jax.jit(jax.grad(loss))(params)
    numpy_params = {k: np.asarray(v) for k, v in params.items()}
    *_, want = reference(cell, True, xs, state0, numpy_params, dhs, dfinal)
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_allclose(np.asarray(got[key]), want[key], rtol=1e-9, atol=1e-9)


def test_a_traced_array_still_meets_the_device_check_of_its_library():
    """A tracer (device None) is accepted next to concrete arrays; other libraries are not."""
    x, gain, bias, _ = _inputs("layer_norm")

    def mixed(a):
        with pytest.raises(TypeError, match=r"gain must be an array of the same library"):
            normcore.layer_norm(a, np.asarray(gain))
        return normcore.layer_norm(a, gain, bias)

    _close(jax.jit(mixed)(x), ref_layer_norm(x, gain, bias))


def test_modules_accept_tracers():
    """A module's input check compares devices: a traced input has none (issue #15)."""
    x = _inputs("layer_norm")[0]
    layer = normcore.LayerNorm(6, like=jnp, dtype="float64")
    _close(jax.jit(layer)(x), ref_layer_norm(x, jnp.ones(6), jnp.zeros(6)))


# -- float64 without jax_enable_x64 ---------------------------------------------
@pytest.mark.parametrize(
    "make",
    [
        lambda: normcore.LayerNorm(4, like=jnp, dtype="float64"),
        lambda: normcore.BatchNorm(4, like=jnp, dtype=jnp.float64),
        lambda: normcore.rnn_params("lstm", 3, 4, like=jnp, dtype="float64"),
        lambda: normcore.LSTM(3, 4, like=jnp.zeros(1), dtype="float64"),
    ],
    ids=["LayerNorm", "BatchNorm", "rnn_params", "LSTM"],
)
def test_float64_without_x64_is_a_type_error_naming_the_setting(make):
    """JAX would silently create float32 arrays (and the next float32 call would fail)."""
    with jax.enable_x64(False), pytest.raises(TypeError, match=r"jax_enable_x64"):
        make()


def test_float32_without_x64_works():
    with jax.enable_x64(False):
        layer = normcore.LayerNorm(4, like=jnp)
        x = jnp.arange(8.0).reshape(2, 4)
        assert layer(x).dtype == jnp.float32


# -- the command line ----------------------------------------------------------
def test_normcore_check_runs_on_jax(capsys):
    """``normcore check --backend jax`` passed the top-level module as a namespace (#15)."""
    assert main(["check", "--backend", "jax"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:-1]]
    assert {r[2] for r in rows} == {"float32", "float64"}
    assert all(r[0] == "jax" and r[-1] == "PASS" for r in rows)


def test_normcore_check_skips_float64_without_x64_saying_why(capsys):
    with jax.enable_x64(False):
        assert main(["check", "--backend", "jax"]) == 0
    out = capsys.readouterr().out
    float64 = [line for line in out.splitlines()[1:] if " float64 " in line]
    assert len(float64) == 1 and "SKIP" in float64[0] and "jax_enable_x64" in float64[0]
    assert out.splitlines()[-1] == "8 passed, 0 failed, 1 skipped"


def test_like_the_top_level_jax_module():
    """``like=jax`` means jax.numpy, as ``like=torch`` means torch."""
    layer = normcore.LayerNorm(4, like=jax)
    assert layer.xp is jnp and layer.gain.dtype == jnp.float32


# -- modules holding JAX arrays ------------------------------------------------
@pytest.mark.parametrize("copy_", ["pickle", "deepcopy"])
def test_a_jax_module_can_be_pickled_and_deep_copied(copy_):
    """JAX's Device objects cannot be pickled (issue #15): the device is kept by name."""
    import copy
    import pickle

    bn = normcore.BatchNorm(3, like=jnp, dtype="float64")
    x = jnp.asarray(np.random.default_rng(3).normal(size=(8, 3)))
    bn(x)
    clone = pickle.loads(pickle.dumps(bn)) if copy_ == "pickle" else copy.deepcopy(bn)
    assert clone.device == bn.device and clone.xp is jnp
    for key, value in bn.state_dict().items():
        np.testing.assert_array_equal(np.asarray(clone.state_dict()[key]), np.asarray(value))
    _close(clone(x, training=False), bn(x, training=False))


@pytest.mark.parametrize("device", ["cpu", "cpu:0"])
def test_a_device_by_name(device):
    """``device="cpu"`` is a jax.Device to JAX (issue #15: AttributeError)."""
    bn = normcore.BatchNorm(3, like=jnp, device=device)
    assert bn.device == jax.devices("cpu")[0]
    params = normcore.rnn_params("gru", 2, 3, like=jnp, device=device)
    assert all(p.device == jax.devices("cpu")[0] for p in params.values())


def test_an_unknown_device_names_jax_devices():
    with pytest.raises(ValueError, match=r"device 'tpu:7' is not a JAX device; JAX has: cpu:0"):
        normcore.LayerNorm(3, like=jnp, device="tpu:7")


def test_reprs_and_messages_name_jax():
    layer = normcore.LayerNorm(3, like=jnp)
    assert repr(layer).endswith("jax float32 on cpu:0)")
    with pytest.raises(TypeError, match=r"this LayerNorm's library \(jax\), got numpy.ndarray"):
        layer(np.ones((2, 3), np.float32))

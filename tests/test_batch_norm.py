"""batch_norm / group_norm / instance_norm and their backward on every backend, path and dtype."""

from __future__ import annotations

import numpy as np
import pytest
from _support import assert_close, assert_grads, assert_like, torch_values_and_grads

import normcore

# (shape, axis): N x D, N x C x L, N x C x H x W, channels-last N x H x W x C
BN_LAYOUTS = [((6, 4), 1), ((5, 3, 4), 1), ((4, 3, 2, 5), 1), ((4, 2, 5, 3), -1)]


def _torch_functional():
    return pytest.importorskip("torch").nn.functional


def _channels_first(fn, axis):
    """Wrap a torch function of channels-first input so it takes ``axis`` as the channel axis."""
    torch = pytest.importorskip("torch")

    def wrapped(x, *rest):
        return torch.movedim(fn(torch.movedim(x, axis, 1), *rest), 1, axis)

    return wrapped


def _arrays(backend, dtype, rng, shape, axis, affine=True):
    channels = shape[axis]
    x = backend.asarray(rng.normal(0.5, 2.0, size=shape), dtype)
    dy = backend.asarray(rng.normal(size=shape), dtype)
    if not affine:
        return x, dy, None, None
    gain = backend.asarray(rng.normal(1.0, 0.3, size=channels), dtype)
    bias = backend.asarray(rng.normal(0.0, 0.3, size=channels), dtype)
    return x, dy, gain, bias


def _np(backend, *arrays):
    return [None if a is None else backend.to_numpy(a) for a in arrays]


@pytest.mark.parametrize(("shape", "axis"), BN_LAYOUTS)
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_training_matches_torch(backend, dtype, rng, shape, axis, affine):
    x, dy, gain, bias = _arrays(backend, dtype, rng, shape, axis, affine)
    y = normcore.batch_norm(x, gain, bias, axis=axis)
    assert_like(y, x)
    grads = normcore.batch_norm_backward(dy, x, gain, bias, axis=axis)
    functional = _torch_functional()
    fn = _channels_first(
        lambda t, g, b: functional.batch_norm(t, None, None, g, b, training=True), axis
    )
    want_y, want_grads = torch_values_and_grads(fn, *_np(backend, dy, x, gain, bias))
    assert_close(backend, y, want_y, dtype)
    assert_grads(backend, dtype, grads, want_grads, (x, gain, bias), shape)


@pytest.mark.parametrize(("shape", "axis"), BN_LAYOUTS)
def test_batch_norm_with_given_statistics_matches_torch(backend, dtype, rng, shape, axis):
    x, dy, gain, bias = _arrays(backend, dtype, rng, shape, axis)
    mean = backend.asarray(rng.normal(size=shape[axis]), dtype)
    var = backend.asarray(rng.uniform(0.5, 3.0, size=shape[axis]), dtype)
    y = normcore.batch_norm(x, gain, bias, axis=axis, mean=mean, var=var)
    assert_like(y, x)
    grads = normcore.batch_norm_backward(dy, x, gain, bias, axis=axis, mean=mean, var=var)
    torch = pytest.importorskip("torch")
    m, v = (torch.tensor(a) for a in _np(backend, mean, var))
    fn = _channels_first(
        lambda t, g, b: torch.nn.functional.batch_norm(t, m, v, g, b, training=False), axis
    )
    want_y, want_grads = torch_values_and_grads(fn, *_np(backend, dy, x, gain, bias))
    assert_close(backend, y, want_y, dtype)
    assert_grads(backend, dtype, grads, want_grads, (x, gain, bias), shape)


GROUP_CASES = [((3, 6, 4), 2), ((2, 6, 3, 2), 3), ((2, 4, 5), 1), ((2, 4, 5), 4), ((3, 4), 2)]


@pytest.mark.parametrize(("shape", "groups"), GROUP_CASES)
def test_group_norm_matches_torch(backend, dtype, rng, shape, groups):
    x, dy, gain, bias = _arrays(backend, dtype, rng, shape, 1)
    y = normcore.group_norm(x, groups, gain, bias)
    assert_like(y, x)
    grads = normcore.group_norm_backward(dy, x, groups, gain, bias)
    functional = _torch_functional()
    want_y, want_grads = torch_values_and_grads(
        lambda t, g, b: functional.group_norm(t, groups, g, b), *_np(backend, dy, x, gain, bias)
    )
    assert_close(backend, y, want_y, dtype)
    assert_grads(backend, dtype, grads, want_grads, (x, gain, bias), shape)


@pytest.mark.parametrize("shape", [(3, 4, 5), (2, 3, 4, 2)])
@pytest.mark.parametrize("affine", [True, False])
def test_instance_norm_matches_torch(backend, dtype, rng, shape, affine):
    x, dy, gain, bias = _arrays(backend, dtype, rng, shape, 1, affine)
    y = normcore.instance_norm(x, gain, bias)
    assert_like(y, x)
    grads = normcore.instance_norm_backward(dy, x, gain, bias)
    functional = _torch_functional()
    want_y, want_grads = torch_values_and_grads(
        lambda t, g, b: functional.instance_norm(t, weight=g, bias=b),
        *_np(backend, dy, x, gain, bias),
    )
    assert_close(backend, y, want_y, dtype)
    assert_grads(backend, dtype, grads, want_grads, (x, gain, bias), shape)


@pytest.mark.parametrize(
    "method",
    [
        lambda x, g, b, axis: normcore.batch_norm(x, g, b, axis=axis),
        lambda x, g, b, axis: normcore.group_norm(x, 2, g, b, axis=axis),
        lambda x, g, b, axis: normcore.instance_norm(x, g, b, axis=axis),
        lambda x, g, b, axis: normcore.batch_norm_backward(x * 0.5, x, g, b, axis=axis).dx,
        lambda x, g, b, axis: normcore.group_norm_backward(x * 0.5, x, 2, g, b, axis=axis).dx,
    ],
    ids=["batch", "group", "instance", "batch-backward", "group-backward"],
)
def test_channels_last_equals_channels_first(backend, dtype, rng, method):
    nchw = rng.normal(1.0, 2.0, size=(3, 4, 5, 2))
    gain, bias = (backend.asarray(rng.normal(size=4), dtype) for _ in range(2))
    first = method(backend.asarray(nchw, dtype), gain, bias, 1)
    last = method(backend.asarray(np.moveaxis(nchw, 1, -1), dtype), gain, bias, -1)
    # the same arithmetic on the same numbers, in another memory order
    assert_close(backend, last, np.moveaxis(backend.to_numpy(first), 1, -1), dtype)


def test_constant_channel_gives_exactly_the_bias(backend, dtype, rng):
    values = np.array([0.1, -3.7, 1e4, 0.0])
    x = backend.asarray(values[None, :, None, None] * np.ones((5, 4, 3, 2)), dtype)
    gain = backend.asarray(rng.normal(size=4), dtype)
    bias = backend.asarray(rng.normal(size=4), dtype)
    expected = np.broadcast_to(backend.to_numpy(bias)[None, :, None, None], (5, 4, 3, 2))
    stats = {"mean": backend.asarray(values, dtype), "var": backend.asarray(np.ones(4), dtype)}
    for y in (
        normcore.batch_norm(x, gain, bias),
        normcore.batch_norm(x, gain, bias, **stats),
        normcore.instance_norm(x, gain, bias),
    ):
        np.testing.assert_array_equal(backend.to_numpy(y), expected)


def test_permuting_the_batch_permutes_the_output(backend, dtype, rng):
    values = rng.normal(size=(6, 3, 4))
    order = rng.permutation(6)
    gain = backend.asarray(rng.normal(size=3), dtype)
    y = backend.to_numpy(normcore.batch_norm(backend.asarray(values, dtype), gain))
    y_permuted = normcore.batch_norm(backend.asarray(values[order], dtype), gain)
    assert_close(backend, y_permuted, y[order], dtype)


# -- Table 1 of the layer-norm paper, batch-norm row: h = BN(W x), no bias before it ---
def _bn_of_linear(backend, dtype, x, w):
    return backend.to_numpy(normcore.batch_norm(backend.asarray(x @ w.T, dtype), eps=1e-12))


def _table_cases(rng, x, w):
    one = np.ones((x.shape[0], 1))
    scaled_row = w.copy()
    scaled_row[2] *= 7.0
    single_case = x.copy()
    single_case[1] *= 5.0
    return {  # name -> (x', W', invariant?)
        "weight matrix re-scaling": (x, 3.0 * w, True),
        "weight matrix re-centering": (
            x,
            w + np.ones((w.shape[0], 1)) @ rng.normal(size=(1, 5)),
            False,
        ),
        "weight vector re-scaling": (x, scaled_row, True),
        "dataset re-scaling": (4.0 * x, w, True),
        "dataset re-centering": (x + one @ rng.normal(size=(1, 5)), w, True),
        "single training case re-scaling": (single_case, w, False),
    }


@pytest.mark.parametrize(
    "case",
    [
        "weight matrix re-scaling",
        "weight matrix re-centering",
        "weight vector re-scaling",
        "dataset re-scaling",
        "dataset re-centering",
        "single training case re-scaling",
    ],
)
def test_invariance_table_batch_norm_row(backend, dtype, rng, case):
    if dtype in ("float16", "bfloat16"):
        pytest.skip("eps = 1e-12 is below float16/bfloat16 resolution")
    x = rng.normal(size=(8, 5))
    w = rng.normal(size=(6, 5))
    x2, w2, invariant = _table_cases(rng, x, w)[case]
    before = _bn_of_linear(backend, dtype, x, w)
    after = _bn_of_linear(backend, dtype, x2, w2)
    if invariant:
        np.testing.assert_allclose(after, before, atol=100 * np.finfo(dtype).eps)
    else:
        assert np.abs(after - before).max() > 0.1


def test_gradcheck_in_float64():
    torch = pytest.importorskip("torch")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    gain, bias, mean = (
        torch.randn(3, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(3)
    )
    var = torch.rand(3, generator=gen, dtype=torch.float64) + 0.5
    for path in (True, False):
        with normcore.reference_path(path):
            checks = [
                (lambda a, g, b: normcore.batch_norm(a, g, b), (x, gain, bias)),
                (
                    lambda a, g, b: normcore.batch_norm(a, g, b, axis=-1),
                    (x.transpose(1, 2), gain, bias),
                ),
                (lambda a, g, m: normcore.batch_norm(a, g, mean=m, var=var), (x, gain, mean)),
                (lambda a, g, b: normcore.group_norm(a, 3, g, b), (x, gain, bias)),
                (lambda a, g, b: normcore.instance_norm(a, g, b), (x, gain, bias)),
            ]
            for fn, inputs in checks:
                assert torch.autograd.gradcheck(fn, inputs)


def test_explicit_backward_equals_finite_differences(backend, rng):
    from _support import finite_difference

    x_np, dy_np = rng.normal(size=(5, 3, 2)), rng.normal(size=(5, 3, 2))
    gain = backend.asarray(rng.normal(size=3))
    grads = normcore.batch_norm_backward(backend.asarray(dy_np), backend.asarray(x_np), gain)

    def f(v):
        return backend.to_numpy(normcore.batch_norm(backend.asarray(v), gain))

    np.testing.assert_allclose(
        backend.to_numpy(grads.dx), finite_difference(f, x_np, dy_np), rtol=1e-6, atol=1e-7
    )


@pytest.mark.parametrize("shape", [(0, 3), (0, 3, 4), (4, 0)])
def test_zero_size_input_returns_empty(backend, shape):
    x = backend.asarray(np.zeros(shape))
    gain = backend.asarray(np.ones(shape[1]))
    for y in (
        normcore.batch_norm(x, gain, gain),
        normcore.group_norm(x, 1, gain),
    ):
        assert_like(y, x)
    grads = normcore.batch_norm_backward(x, x, gain, gain)
    assert_like(grads.dx, x)
    assert_like(grads.dgain, gain)


def test_inputs_are_not_modified(backend, dtype, rng):
    arrays = [
        backend.asarray(rng.normal(size=s), dtype) for s in ((4, 6, 2), (6,), (6,), (4, 6, 2))
    ]
    before = [backend.to_numpy(a).copy() for a in arrays]
    x, gain, bias, dy = arrays
    normcore.batch_norm(x, gain, bias)
    normcore.batch_norm_backward(dy, x, gain, bias, mean=gain, var=gain * gain)
    normcore.group_norm_backward(dy, x, 3, gain, bias)
    for a, b in zip(arrays, before, strict=True):
        np.testing.assert_array_equal(backend.to_numpy(a), b)


# -- bad inputs: each message checked ----------------------------------------------------
@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda b: normcore.batch_norm(b.asarray(np.ones((1, 3)))),
            ValueError,
            r"expected more than 1 value per channel when training, got input shape \(1, 3\)",
        ),
        (
            lambda b: normcore.batch_norm_backward(
                b.asarray(np.ones((1, 3, 1))), b.asarray(np.ones((1, 3, 1)))
            ),
            ValueError,
            r"expected more than 1 value per channel when training, got input shape \(1, 3, 1\)",
        ),
        (
            lambda b: normcore.batch_norm(b.asarray(np.ones((2, 3))), mean=b.asarray(np.ones(3))),
            ValueError,
            r"mean and var must be given together .* got only mean",
        ),
        (
            lambda b: normcore.batch_norm(b.asarray(np.ones((2, 3))), var=b.asarray(np.ones(3))),
            ValueError,
            r"got only var",
        ),
        (
            lambda b: normcore.batch_norm(b.asarray(np.ones((2, 3))), b.asarray(np.ones(2))),
            ValueError,
            r"gain must have shape \(3,\) \(one value per feature along axis 1\), got shape \(2,\)",
        ),
        (
            lambda b: normcore.batch_norm(
                b.asarray(np.ones((2, 3))), mean=b.asarray(np.ones(3)), var=b.asarray(np.ones(4))
            ),
            ValueError,
            r"var must have shape \(3,\)",
        ),
        (
            lambda b: normcore.batch_norm(b.asarray(np.ones(3))),
            ValueError,
            r"x must have at least 2 dimensions \(a batch axis and the feature axis\), "
            r"got shape \(3,\)",
        ),
        (
            lambda b: normcore.batch_norm(b.asarray(np.ones((2, 3))), axis=2),
            ValueError,
            r"axis=2 is out of range for an input with 2 dimensions",
        ),
        (
            lambda b: normcore.batch_norm(b.asarray(np.ones((2, 3))), axis=(0, 1)),
            TypeError,
            r"axis must be an int, got tuple",
        ),
        (
            lambda b: normcore.batch_norm(b.asarray(np.ones((2, 3))), eps=0.0),
            ValueError,
            r"eps must be a finite number > 0, got 0.0",
        ),
        (
            lambda b: normcore.batch_norm(
                b.asarray(np.ones((2, 3)), "float32"),
                mean=b.asarray(np.ones(3)),
                var=b.asarray(np.ones(3)),
            ),
            TypeError,
            r"mean must have dtype .*float32 like x",
        ),
        (
            lambda b: normcore.batch_norm_backward(
                b.asarray(np.ones((3, 2))), b.asarray(np.ones((2, 3)))
            ),
            ValueError,
            r"dy must have x's shape \(2, 3\), got \(3, 2\)",
        ),
        (
            lambda b: normcore.group_norm(b.asarray(np.ones((2, 6, 4))), 4),
            ValueError,
            r"num_groups must be a positive divisor of the number of channels \(6\), got 4",
        ),
        (
            lambda b: normcore.group_norm(b.asarray(np.ones((2, 6, 4))), 0),
            ValueError,
            r"num_groups must be a positive divisor of the number of channels \(6\), got 0",
        ),
        (
            lambda b: normcore.group_norm(b.asarray(np.ones((2, 6, 4))), 2.0),
            TypeError,
            r"num_groups must be an int, got float",
        ),
        (
            lambda b: normcore.group_norm_backward(
                b.asarray(np.ones((2, 6))), b.asarray(np.ones((2, 6))), 7
            ),
            ValueError,
            r"num_groups must be a positive divisor .* \(6\), got 7",
        ),
        (
            lambda b: normcore.group_norm(b.asarray(np.ones((2, 6, 4))), 2, axis=0),
            ValueError,
            r"axis must be the channel axis, not the batch axis 0, got axis=0",
        ),
        (
            lambda b: normcore.group_norm(b.asarray(np.ones((2, 6, 4))), 2, b.asarray(np.ones(4))),
            ValueError,
            r"gain must have shape \(6,\) \(one value per channel along axis 1\), got shape \(4,\)",
        ),
        (
            lambda b: normcore.instance_norm(b.asarray(np.ones((2, 3, 1)))),
            ValueError,
            r"expected more than 1 spatial element per channel for instance_norm, got input "
            r"shape \(2, 3, 1\)",
        ),
        (
            lambda b: normcore.instance_norm_backward(
                b.asarray(np.ones((2, 3))), b.asarray(np.ones((2, 3)))
            ),
            ValueError,
            r"expected more than 1 spatial element per channel",
        ),
    ],
)
def test_bad_inputs(backend, call, error, message):
    with pytest.raises(error, match=message):
        call(backend)


def test_non_array_and_foreign_parameters():
    with pytest.raises(TypeError, match=r"x must be an array .* got list"):
        normcore.batch_norm([[1.0, 2.0], [3.0, 4.0]])
    strict = pytest.importorskip("array_api_strict")
    with pytest.raises(TypeError, match=r"var must be an array of the same library as x"):
        normcore.batch_norm(np.ones((2, 3)), mean=np.ones(3), var=strict.ones(3))


def test_one_value_per_channel_works_with_given_statistics(backend):
    x = backend.asarray(np.array([[1.0, 2.0, 3.0]]))
    y = normcore.batch_norm(x, mean=backend.asarray(np.zeros(3)), var=backend.asarray(np.ones(3)))
    assert_close(backend, y, np.array([[1.0, 2.0, 3.0]]) / np.sqrt(1 + 1e-5), "float64")

"""weight_norm / weight_norm_backward on every backend, path and dtype."""

from __future__ import annotations

import numpy as np
import pytest
from _support import assert_close, assert_like, finite_difference

import normcore

# (v shape, kept axis): a dense (out, in) matrix, a conv kernel, the other axis, two kept axes
LAYOUTS = [((4, 3), 0), ((5, 3, 2, 2), 0), ((3, 4), 1), ((2, 3, 4), (0, 2))]


def _kept(axis):
    return axis if isinstance(axis, tuple) else (axis,)


def reference_weight_norm(v, g, axis):
    """Float64 ``g * v / ||v||`` with the norm over the axes not in ``axis``."""
    kept = _kept(axis)
    reduced = tuple(a for a in range(v.ndim) if a not in kept)
    norm = np.sqrt(np.sum(np.asarray(v, np.float64) ** 2, axis=reduced, keepdims=True))
    w = v / norm
    if g is not None:
        shape = [1] * v.ndim
        for dim, a in enumerate(kept):
            shape[a] = g.shape[dim]
        w = w * np.reshape(g, shape)
    return w


def _inputs(backend, dtype, rng, shape, axis):
    v = backend.asarray(rng.normal(size=shape), dtype)
    g = backend.asarray(rng.normal(1.0, 0.5, size=[shape[a] for a in _kept(axis)]), dtype)
    return v, g


@pytest.mark.parametrize(("shape", "axis"), LAYOUTS)
@pytest.mark.parametrize("with_g", [True, False])
def test_matches_float64_formula(backend, dtype, rng, shape, axis, with_g):
    v, g = _inputs(backend, dtype, rng, shape, axis)
    g = g if with_g else None
    w = normcore.weight_norm(v, g, axis=axis)
    assert_like(w, v)
    g_np = None if g is None else backend.to_numpy(g)
    assert_close(backend, w, reference_weight_norm(backend.to_numpy(v), g_np, axis), dtype)


def test_rows_have_unit_norm_without_g(backend, rng):
    v = backend.asarray(rng.normal(size=(6, 5)) * 100.0)
    w = backend.to_numpy(normcore.weight_norm(v))
    np.testing.assert_allclose(np.linalg.norm(w, axis=1), np.ones(6), rtol=1e-12)


def test_all_zero_rows_give_zero_not_nan(backend):
    v = backend.asarray(np.array([[0.0, 0.0], [3.0, 4.0]]))
    w = normcore.weight_norm(v)
    got = backend.to_numpy(w)
    np.testing.assert_array_equal(got[0], [0.0, 0.0])
    np.testing.assert_allclose(got[1], [0.6, 0.8], rtol=1e-12)


@pytest.mark.parametrize(
    ("shape", "axis"), [layout for layout in LAYOUTS if isinstance(layout[1], int)]
)
def test_values_and_grads_match_torch(backend, dtype, rng, shape, axis):
    torch = pytest.importorskip("torch")
    v, g = _inputs(backend, dtype, rng, shape, axis)
    dw = backend.asarray(rng.normal(size=shape), dtype)
    vt = torch.tensor(backend.to_numpy(v), requires_grad=True)
    keep = [1] * len(shape)
    keep[axis] = shape[axis]
    gt = torch.tensor(backend.to_numpy(g)).reshape(keep).requires_grad_()
    wt = torch._weight_norm(vt, gt, axis)
    wt.backward(torch.tensor(backend.to_numpy(dw)))
    assert_close(backend, normcore.weight_norm(v, g, axis=axis), wt.detach().numpy(), dtype)
    grads = normcore.weight_norm_backward(dw, v, g, axis=axis)
    assert grads.dbias is None
    assert_like(grads.dx, v)
    assert_like(grads.dgain, g)
    assert_close(backend, grads.dx, vt.grad.numpy(), dtype, scale=4)
    count = np.sqrt(np.prod(shape) / shape[axis])
    assert_close(backend, grads.dgain, gt.grad.reshape(-1).numpy(), dtype, scale=4 * count)


@pytest.mark.parametrize(("shape", "axis"), LAYOUTS)
def test_backward_matches_finite_differences(backend, rng, shape, axis):
    v_np = rng.normal(size=shape)
    dw_np = rng.normal(size=shape)
    g_np = rng.normal(1.0, 0.5, size=[shape[a] for a in _kept(axis)])
    v, dw, g = (backend.asarray(a) for a in (v_np, dw_np, g_np))
    grads = normcore.weight_norm_backward(dw, v, g, axis=axis)

    def f_v(a):
        return backend.to_numpy(normcore.weight_norm(backend.asarray(a), g, axis=axis))

    def f_g(a):
        return backend.to_numpy(normcore.weight_norm(v, backend.asarray(a), axis=axis))

    for got, f, at in ((grads.dx, f_v, v_np), (grads.dgain, f_g, g_np)):
        want = finite_difference(f, at.copy(), dw_np)
        np.testing.assert_allclose(backend.to_numpy(got), want, rtol=1e-6, atol=1e-7)


def test_backward_without_g(backend, rng):
    v = backend.asarray(rng.normal(size=(3, 4)))
    # dw parallel to w: the gradient w.r.t. the direction vanishes
    w = normcore.weight_norm(v)
    grads = normcore.weight_norm_backward(w, v)
    assert grads.dgain is None
    assert_close(backend, grads.dx, np.zeros((3, 4)), "float64")


def test_torch_autograd_gradcheck():
    torch = pytest.importorskip("torch")
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(3, 2, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: normcore.weight_norm(a, b), (v, g))


@pytest.mark.parametrize("shape", [(0, 3), (3, 0)])
@pytest.mark.parametrize("with_g", [False, True])
def test_empty_torch_input_stays_on_the_autograd_graph(shape, with_g):
    """As every other function: an empty w is computed from v and g, so backward reaches them.

    The gradients are sums over no values: zeros of v's and g's shapes.
    """
    torch = pytest.importorskip("torch")
    v = torch.zeros(shape, requires_grad=True)
    g = torch.ones(shape[0], requires_grad=True) if with_g else None
    w = normcore.weight_norm(v, g)
    assert w.shape == shape
    assert w.grad_fn is not None
    w.sum().backward()
    assert torch.equal(v.grad, torch.zeros(shape))
    if with_g:
        assert torch.equal(g.grad, torch.zeros(shape[0]))


@pytest.mark.parametrize("shape", [(0, 3), (3, 0)])
def test_backward_of_an_empty_input_is_zero(backend, shape):
    v = backend.asarray(np.zeros(shape), "float32")
    g = backend.asarray(np.ones(shape[0]), "float32")
    grads = normcore.weight_norm_backward(v, v, g)
    assert_close(backend, grads.dx, np.zeros(shape), "float32")
    assert_close(backend, grads.dgain, np.zeros(shape[0]), "float32")
    assert normcore.weight_norm_backward(v, v).dgain is None


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda b, v: normcore.weight_norm([[1.0]]), TypeError, r"^v must be an array .* list"),
        (
            lambda b, v: normcore.weight_norm(v, b.asarray(np.ones(3))),
            ValueError,
            r"^g must have shape \(2,\) \(the shape of v's axes \(0,\)\), got shape \(3,\)",
        ),
        (
            lambda b, v: normcore.weight_norm(v, axis=(0, 1)),
            ValueError,
            r"^axis=\(0, 1\) keeps every axis of v \(shape \(2, 3\)\)",
        ),
        (lambda b, v: normcore.weight_norm(v, axis=2), ValueError, r"^axis=2 is out of range"),
        (lambda b, v: normcore.weight_norm(v, eps=0.0), ValueError, r"^eps must be a finite"),
        (
            lambda b, v: normcore.weight_norm(b.xp.asarray(1.0, device=b.device)),
            ValueError,
            r"^v must have at least one dimension",
        ),
        (
            lambda b, v: normcore.weight_norm_backward(b.asarray(np.ones((3, 2))), v),
            ValueError,
            r"^dw must have v's shape \(2, 3\), got \(3, 2\)",
        ),
        (
            lambda b, v: normcore.weight_norm_backward(b.asarray(np.ones((2, 3)), "float32"), v),
            TypeError,
            r"^dw must have dtype .*float64",
        ),
    ],
)
def test_bad_arguments(backend, call, error, message):
    v = backend.asarray(np.ones((2, 3)))
    with pytest.raises(error, match=message):
        call(backend, v)

"""normcore.optim: SGD and Adam against torch.optim, on mappings and on Modules."""

from __future__ import annotations

import numpy as np
import pytest
from _support import assert_like

import normcore
from normcore import Module
from normcore.optim import SGD, Adam

STEPS = 5


def _torch_trajectory(make_optimizer, initial, grads):
    torch = pytest.importorskip("torch")
    tensors = {k: torch.tensor(v, requires_grad=True) for k, v in initial.items()}
    opt = make_optimizer(list(tensors.values()))
    for step_grads in grads:
        for k, t in tensors.items():
            t.grad = torch.tensor(step_grads[k])
        opt.step()
    return {k: t.detach().numpy() for k, t in tensors.items()}


def _problem(rng):
    initial = {"w": rng.normal(size=(3, 2)), "b": rng.normal(size=(2,))}
    grads = [{k: rng.normal(size=v.shape) for k, v in initial.items()} for _ in range(STEPS)]
    return initial, grads


def _torch_optim(name, **kwargs):
    """Build ``torch.optim.<name>`` lazily: only the comparisons with torch need it."""
    return lambda p: getattr(pytest.importorskip("torch").optim, name)(p, **kwargs)


OPTIMIZERS = {
    "sgd": (lambda t: SGD(t, lr=0.1), _torch_optim("SGD", lr=0.1)),
    "sgd-momentum": (
        lambda t: SGD(t, lr=0.1, momentum=0.9),
        _torch_optim("SGD", lr=0.1, momentum=0.9),
    ),
    "adam": (
        lambda t: Adam(t, lr=0.01, betas=(0.8, 0.99), eps=1e-6),
        _torch_optim("Adam", lr=0.01, betas=(0.8, 0.99), eps=1e-6),
    ),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_mapping_updates_equal_torch_optim(backend, rng, name):
    ours, theirs = OPTIMIZERS[name]
    initial, grads = _problem(rng)
    params = {k: backend.asarray(v) for k, v in initial.items()}
    opt = ours(params)
    for step_grads in grads:
        opt.step({k: backend.asarray(v) for k, v in step_grads.items()})
    expected = _torch_trajectory(theirs, initial, grads)
    for k, want in expected.items():
        assert_like(params[k], backend.asarray(initial[k]))
        np.testing.assert_allclose(backend.to_numpy(params[k]), want, rtol=1e-12, atol=1e-14)


class _Affine(Module):
    _parameter_names = ("w", "b")

    def __init__(self, initial, grads):
        super().__init__(dtype="float64")
        self.w, self.b = initial["w"], initial["b"]
        self._grads = grads


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_module_updates_by_setattr(rng, name):
    ours, theirs = OPTIMIZERS[name]
    initial, grads = _problem(rng)
    module = _Affine({k: v.copy() for k, v in initial.items()}, {})
    opt = ours(module)
    for step_grads in grads:
        module._grads = step_grads  # what a backward would store
        opt.step()
    expected = _torch_trajectory(theirs, initial, grads)
    for k, want in expected.items():
        np.testing.assert_allclose(getattr(module, k), want, rtol=1e-12, atol=1e-14)


def test_read_only_arrays_are_replaced_not_written(rng):
    w = np.ones(3)
    w.flags.writeable = False
    params = {"w": w}
    Adam(params, lr=0.1).step({"w": np.ones(3)})
    assert params["w"] is not w and np.all(w == 1)


@pytest.mark.parametrize(
    ("grads", "error", "match"),
    [
        (None, TypeError, r"step\(\) on a mapping of parameters needs grads"),
        ({}, ValueError, r"grads \(the parameters' names\) must have exactly the keys .*missing"),
        ({"w": np.ones(3), "v": np.ones(1)}, ValueError, r"unexpected \['v'\]"),
        ({"w": np.ones(4)}, ValueError, r"grads\['w'\] must have shape \(3,\), got \(4,\)"),
        ({"w": [1.0, 1.0, 1.0]}, TypeError, r"grads\['w'\] must be an array"),
        ({"w": None}, TypeError, r"^grads\['w'\] must be an array .*got None$"),
        (
            {"w": np.ones(3, dtype=np.float32)},
            TypeError,
            r"grads\['w'\] must have dtype float64 like parameter 'w', got float32",
        ),
    ],
)
@pytest.mark.parametrize("make", [Adam, lambda t: SGD(t, lr=0.1, momentum=0.9)])
def test_bad_grads_leave_the_parameters_unchanged(make, grads, error, match):
    params = {"w": np.ones(3)}
    opt = make(params)
    with pytest.raises(error, match=match):
        opt.step(grads)
    assert opt.steps == 0 and np.all(params["w"] == 1) and not opt.state


def test_grad_of_another_dtype_never_changes_the_parameters_dtype():
    params = {"w": np.ones(3, dtype=np.float32)}
    with pytest.raises(TypeError, match=r"grads\['w'\] must have dtype float32"):
        SGD(params, lr=0.1).step({"w": np.ones(3)})
    assert params["w"].dtype == np.float32


def test_a_failing_later_parameter_leaves_earlier_state_untouched():
    strict = pytest.importorskip("array_api_strict")
    here, there = strict.Device("device1"), strict.Device("CPU_DEVICE")
    params = {"a": strict.ones(3, device=here), "b": strict.ones(3, device=here)}
    opt = Adam(params, lr=0.1)
    opt.step({"a": strict.ones(3, device=here), "b": strict.ones(3, device=here)})
    before = {k: strict.asarray(v, copy=True) for k, v in params.items()}
    state = {k: dict(v) for k, v in opt.state.items()}
    bad = {"a": strict.ones(3, device=here), "b": strict.ones(3, device=there)}
    with pytest.raises(ValueError, match=r"grads\['b'\] is on device .* but parameter 'b'"):
        opt.step(bad)
    assert opt.steps == 1
    assert all(opt.state[k][b] is state[k][b] for k in state for b in state[k])
    assert all(bool(strict.all(params[k] == before[k])) for k in params)


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: SGD([1.0], lr=0.1), TypeError, r"targets must be a mutable mapping"),
        (lambda: SGD({}, lr=-1.0), ValueError, r"lr must be a finite number >= 0"),
        (lambda: SGD({}, lr="1"), TypeError, r"lr must be a real number"),
        (lambda: SGD({}, lr=0.1, momentum=1.0), ValueError, r"momentum must be a finite"),
        (lambda: Adam({}, betas=0.9), TypeError, r"betas must be a tuple of two floats"),
        (lambda: Adam({}, betas=(0.9, 1.5)), ValueError, r"betas\[1\] must be a finite"),
    ],
)
def test_bad_arguments(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_adam_trains_rnn_params_in_place_of_the_mapping(rng):
    params = normcore.rnn_params("gru", 2, 3, dtype="float64")
    xs = rng.normal(size=(4, 2, 2))
    opt = Adam(params, lr=0.05)
    losses = []
    for _ in range(20):
        hs, _ = normcore.rnn(xs, None, params, cell="gru")
        losses.append(float(np.sum((hs - 0.5) ** 2)))
        opt.step(normcore.rnn_backward(2 * (hs - 0.5), xs, None, params, cell="gru").dparams)
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("make", [Adam, lambda t: SGD(t, lr=0.1, momentum=0.9)])
def test_trainable_torch_parameters_stay_leaves_outside_autograd(make):
    """As with torch.optim: ``.grad`` keeps working step after step, no graph grows."""
    torch = pytest.importorskip("torch")
    params = {"w": torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)}
    reference = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    ours = make(params)
    theirs = (
        torch.optim.Adam([reference])
        if isinstance(ours, Adam)
        else torch.optim.SGD([reference], lr=0.1, momentum=0.9)
    )
    for _ in range(3):
        (params["w"] ** 3).sum().backward()
        assert params["w"].grad is not None
        ours.step({"w": params["w"].grad})
        theirs.zero_grad()
        (reference**3).sum().backward()
        theirs.step()
        w = params["w"]
        assert w.is_leaf and w.requires_grad and w.grad_fn is None
        buffers = [v for k, v in ours.state["w"].items() if k != "step"]  # step: an int
        assert all(v.grad_fn is None and not v.requires_grad for v in buffers)
        torch.testing.assert_close(w, reference, rtol=1e-15, atol=1e-15)


def test_momentum_buffer_is_not_the_callers_gradient():
    """torch users zero .grad in place after a step: the buffer must not follow it."""
    params = {"w": np.array([0.0])}
    opt = SGD(params, lr=1.0, momentum=0.5)
    grad = np.empty(1)
    for value in (1.0, 3.0):
        grad[...] = value
        opt.step({"w": grad})
    np.testing.assert_array_equal(params["w"], [-(1.0) - (0.5 * 1.0 + 3.0)])


def test_step_before_any_backward_says_so():
    layer = normcore.LayerNorm(3)
    with pytest.raises(
        ValueError, match=r"^step\(\) found no gradients in the LayerNorm: call its"
    ):
        Adam(layer).step()


@pytest.mark.parametrize("make", [Adam, lambda t: SGD(t, lr=0.1, momentum=0.9)])
def test_a_parameter_replaced_by_another_shape_is_refused_not_broadcast(make):
    params = {"w": np.ones(3, "f4")}
    opt = make(params)
    opt.step({"w": np.ones(3, "f4")})
    params["w"] = np.ones(1, "f4")
    with pytest.raises(ValueError, match=r"parameter 'w' has shape \(1,\) but the optimizer's st"):
        opt.step({"w": np.ones(1, "f4")})
    assert params["w"].shape == (1,) and opt.steps == 1
    opt.reset_state("w")
    opt.step({"w": np.ones(1, "f4")})
    assert params["w"].shape == (1,) and opt.steps == 2


def test_reset_state_gives_the_new_parameter_a_first_step_like_torch():
    """Adam's bias correction counts the parameter's own steps (torch: state['step'])."""
    torch = pytest.importorskip("torch")
    params = {"w": np.ones(3)}
    opt = Adam(params, lr=0.1)
    for _ in range(5):
        opt.step({"w": np.ones(3)})
    params["w"] = np.array([2.0, -1.0])
    opt.reset_state("w")
    g = np.array([0.5, -3.0])
    opt.step({"w": g})
    fresh = torch.tensor([2.0, -1.0], dtype=torch.float64, requires_grad=True)
    ref = torch.optim.Adam([fresh], lr=0.1)
    fresh.grad = torch.tensor(g)
    ref.step()
    np.testing.assert_allclose(params["w"], fresh.detach().numpy(), rtol=1e-15)
    with pytest.raises(KeyError, match=r"'v' is not a parameter"):
        opt.reset_state("v")


def test_a_parameter_added_later_starts_its_own_adam_steps():
    torch = pytest.importorskip("torch")
    params = {"a": np.ones(2)}
    opt = Adam(params, lr=0.1)
    opt.step({"a": np.ones(2)})
    params["b"] = np.array([1.0, 2.0])
    opt.step({"a": np.ones(2), "b": np.array([1.0, -1.0])})
    b = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    ref = torch.optim.Adam([b], lr=0.1)
    b.grad = torch.tensor([1.0, -1.0], dtype=torch.float64)
    ref.step()
    np.testing.assert_allclose(params["b"], b.detach().numpy(), rtol=1e-15)


@pytest.mark.parametrize("kind", ["sgd", "momentum", "adam"])
def test_zero_dimensional_parameters_like_torch_optim(kind):
    torch = pytest.importorskip("torch")
    params = {"s": np.array(1.5)}
    w = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    if kind == "adam":
        opt, ref = Adam(params, lr=0.1), torch.optim.Adam([w], lr=0.1)
    else:
        momentum = 0.9 if kind == "momentum" else 0.0
        opt = SGD(params, lr=0.1, momentum=momentum)
        ref = torch.optim.SGD([w], lr=0.1, momentum=momentum)
    for g in (2.0, -1.0, 0.5):
        opt.step({"s": np.array(g)})
        w.grad = torch.tensor(g, dtype=torch.float64)
        ref.step()
        assert isinstance(params["s"], np.ndarray) and params["s"].shape == ()
        np.testing.assert_allclose(params["s"], w.item(), rtol=1e-15)
    with pytest.raises(ValueError, match=r"grads\['s'\] must have shape \(\), got \(1,\)"):
        opt.step({"s": np.ones(1)})

"""normcore.torch.InstanceNorm1d/2d/3d against torch.nn's, in training and eval mode."""

from __future__ import annotations

import pytest
from _torch_support import assert_all_close, grads, randomize

import normcore

torch = pytest.importorskip("torch")

TOL = {torch.float32: 2e-5, torch.float64: 1e-12}

OPTIONS = [
    {},
    {"affine": True},
    {"affine": True, "bias": False},
    {"track_running_stats": True},
    {"affine": True, "track_running_stats": True, "momentum": 0.3},
    {"track_running_stats": True, "momentum": None},  # torch: the statistics never move
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "kwargs", OPTIONS, ids=lambda k: ",".join(f"{a}={v}" for a, v in k.items())
)
@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("InstanceNorm1d", (4, 3, 5)),
        ("InstanceNorm1d", (3, 5)),  # unbatched
        ("InstanceNorm2d", (4, 3, 2, 3)),
        ("InstanceNorm3d", (2, 3, 2, 2, 3)),
    ],
)
def test_instance_norm_train_and_eval_equal_torch(path, dtype, kwargs, name, shape):
    theirs = getattr(torch.nn, name)(3, dtype=dtype, **kwargs)
    randomize(theirs, 0)
    ours = getattr(normcore.torch, name)(3, dtype=dtype, **kwargs)
    ours.load_state_dict(theirs.state_dict())
    assert list(ours.state_dict()) == list(theirs.state_dict())
    gen = torch.Generator().manual_seed(1)
    for training, steps in ((True, 3), (False, 1)):
        for step in range(steps):
            x0 = (torch.randn(shape, generator=gen) * (1 + step) + step).to(dtype)
            dy = torch.randn(shape, generator=gen).to(dtype)
            results = []
            for module in (ours, theirs):
                module.train(training).zero_grad()
                x = x0.clone().requires_grad_()
                y = module(x)
                y.backward(dy)
                results.append((y, x.grad, grads(module)))
            assert_all_close(results[0], results[1], TOL[dtype])
            assert_all_close(dict(ours.state_dict()), dict(theirs.state_dict()), TOL[dtype])
    if kwargs.get("track_running_stats") and kwargs.get("momentum", 0.1) is not None:
        assert not torch.equal(ours.running_mean, torch.zeros(3, dtype=dtype))  # it moved
    if kwargs.get("track_running_stats"):
        assert int(ours.num_batches_tracked) == int(theirs.num_batches_tracked) == 0


def test_instance_norm_double_backward_equals_torch():
    results = []
    for cls in (normcore.torch.InstanceNorm2d, torch.nn.InstanceNorm2d):
        module = cls(3, affine=True, dtype=torch.float64)
        randomize(module, 5)
        x = torch.randn(2, 3, 3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
        x.requires_grad_()
        (dx,) = torch.autograd.grad(module(x).square().sum(), x, create_graph=True)
        dx.sum().backward()
        results.append((dx, x.grad, grads(module)))
    assert_all_close(results[0], results[1], 1e-12)


def test_instance_norm_keeps_a_non_finite_batch_out_of_the_running_statistics():
    norm = normcore.torch.InstanceNorm1d(3, track_running_stats=True)
    norm(torch.randn(4, 3, 5))
    before = {k: v.clone() for k, v in norm.state_dict().items()}
    with pytest.warns(RuntimeWarning, match="NaN or infinite statistics"):
        norm(torch.full((4, 3, 5), float("nan")))
    assert_all_close(dict(norm.state_dict()), before, 0)


def test_instance_norm_constant_channel_gives_exactly_the_bias():
    norm = normcore.torch.InstanceNorm2d(2, affine=True)
    with torch.no_grad():
        norm.bias.copy_(torch.tensor([0.5, -2.0]))
    x = torch.full((3, 2, 4, 4), 1e4)
    assert torch.equal(norm(x), norm.bias.view(1, 2, 1, 1).expand(3, 2, 4, 4))


@pytest.mark.parametrize(
    ("make", "shape", "error", "message"),
    [
        (lambda: normcore.torch.InstanceNorm2d(3), (3, 2, 5), None, None),  # unbatched: fine
        (lambda: normcore.torch.InstanceNorm2d(3), (3, 2), ValueError, r"^expected 3D or 4D"),
        (
            lambda: normcore.torch.InstanceNorm1d(3, affine=True),
            (4, 5, 2),
            ValueError,
            r"^input must have num_features=3 values along axis 1, got shape \(4, 5, 2\)",
        ),
        (
            lambda: normcore.torch.InstanceNorm1d(3, track_running_stats=True),
            (5, 2),
            ValueError,
            r"^input must have num_features=3 values along axis 0",
        ),
        (
            lambda: normcore.torch.InstanceNorm1d(3, track_running_stats=True),
            (4, 3, 1),
            ValueError,
            r"^expected more than 1 spatial element per channel",
        ),
    ],
)
def test_instance_norm_bad_input_leaves_the_statistics_unchanged(make, shape, error, message):
    norm = make()
    if norm.track_running_stats:
        norm(torch.randn(4, 3, 5))
    before = {k: v.clone() for k, v in norm.state_dict().items()}
    if error is None:
        assert norm(torch.randn(shape)).shape == shape
        return
    with pytest.raises(error, match=message):
        norm(torch.randn(shape))
    assert_all_close(dict(norm.state_dict()), before, 0)


def test_instance_norm_without_parameters_ignores_num_features_as_torch_does():
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    with pytest.warns(UserWarning, match="num_features is unused"):
        y = normcore.torch.InstanceNorm1d(3)(x)
    with pytest.warns(UserWarning):
        torch.testing.assert_close(y, torch.nn.InstanceNorm1d(3)(x), rtol=1e-12, atol=1e-12)


def test_instance_norm_constructor_errors():
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\] or None, got 2"):
        normcore.torch.InstanceNorm1d(3, momentum=2)
    with pytest.raises(TypeError, match=r"affine must be True or False, got int"):
        normcore.torch.InstanceNorm2d(3, affine=1)
    with pytest.raises(ValueError, match=r"num_features must be >= 1, got 0"):
        normcore.torch.InstanceNorm3d(0)

"""normcore.torch.BatchNorm1d/2d/3d against torch.nn's, and the drop-ins' argument checks."""

from __future__ import annotations

import pytest
from _torch_support import assert_all_close, grads, randomize

import normcore

torch = pytest.importorskip("torch")

TOL = {torch.float32: 2e-5, torch.float64: 1e-10}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize(
    ("name", "shape"),
    [("BatchNorm1d", (6, 3)), ("BatchNorm1d", (4, 3, 5)), ("BatchNorm2d", (4, 3, 2, 3))],
)
def test_batch_norm_train_and_eval_equal_torch(path, dtype, momentum, name, shape):
    theirs = getattr(torch.nn, name)(3, momentum=momentum, dtype=dtype)
    randomize(theirs, 0)
    ours = getattr(normcore.torch, name)(3, momentum=momentum, dtype=dtype)
    ours.load_state_dict(theirs.state_dict())
    gen = torch.Generator().manual_seed(1)
    for step in range(3):
        x0 = (torch.randn(shape, generator=gen) * (1 + step) + step).to(dtype)
        dy = torch.randn(shape, generator=gen).to(dtype)
        results = []
        for module in (ours, theirs):
            module.zero_grad()
            x = x0.clone().requires_grad_()
            y = module.train()(x)
            y.backward(dy)
            results.append((y, x.grad, grads(module)))
        assert_all_close(results[0], results[1], TOL[dtype])
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert_all_close(dict(ours.state_dict()), dict(theirs.state_dict()), TOL[dtype])
    assert int(ours.num_batches_tracked) == 3
    x0 = torch.randn(shape, generator=gen).to(dtype)
    results = []
    for module in (ours, theirs):
        module.zero_grad()
        x = x0.clone().requires_grad_()
        y = module.eval()(x)
        y.sum().backward()
        results.append((y, x.grad, grads(module)))
    assert_all_close(results[0], results[1], TOL[dtype])
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    ours(x0)  # eval mode: the running statistics stay
    assert_all_close(dict(ours.state_dict()), before, 0)


@pytest.mark.parametrize(
    "kwargs", [{"affine": False}, {"track_running_stats": False}, {"bias": False}]
)
def test_batch_norm_options_equal_torch(kwargs):
    theirs = torch.nn.BatchNorm2d(3, dtype=torch.float64, **kwargs)
    ours = normcore.torch.BatchNorm2d(3, dtype=torch.float64, **kwargs)
    randomize(theirs, 2)
    ours.load_state_dict(theirs.state_dict())
    assert list(ours.state_dict()) == list(theirs.state_dict())
    x = torch.randn(4, 3, 2, 2, dtype=torch.float64)
    for training in (True, False):
        torch.testing.assert_close(ours.train(training)(x), theirs.train(training)(x))


def test_batch_norm_loads_version_1_checkpoints_like_torch():
    """A state_dict from before num_batches_tracked existed loads, as into torch.nn."""
    trained = torch.nn.BatchNorm2d(3)
    trained(torch.randn(4, 3, 2, 2))
    old = trained.state_dict()
    del old["num_batches_tracked"]
    old._metadata = {"": {"version": 1}}
    results = []
    for module in (torch.nn.BatchNorm2d(3), normcore.torch.BatchNorm2d(3)):
        module.num_batches_tracked.fill_(5)
        assert str(module.load_state_dict(old)) == "<All keys matched successfully>"
        results.append(module)
    reference, ours = results
    assert int(ours.num_batches_tracked) == int(reference.num_batches_tracked) == 5
    torch.testing.assert_close(ours.running_mean, trained.running_mean)
    assert ours.state_dict()._metadata[""]["version"] == 2
    current = trained.state_dict()
    del current["num_batches_tracked"]  # version 2 without the count: missing, as in torch.nn
    with pytest.raises(RuntimeError, match="num_batches_tracked"):
        normcore.torch.BatchNorm2d(3).load_state_dict(current)


def test_batch_norm_running_statistics_stay_out_of_autograd_and_keep_identity():
    bn = normcore.torch.BatchNorm1d(3)
    running_var = bn.running_var
    bn(torch.randn(5, 3, requires_grad=True)).sum().backward()
    assert bn.running_var is running_var
    assert not any(b.requires_grad for b in bn.buffers())
    bn.reset_parameters()
    assert int(bn.num_batches_tracked) == 0 and torch.equal(bn.running_var, torch.ones(3))


@pytest.mark.parametrize(
    ("module", "x_shape", "error", "message"),
    [
        ("BatchNorm2d", (4, 3, 2), ValueError, r"^expected 4D input \(got 3D input\)"),
        ("BatchNorm1d", (4, 3, 2, 2), ValueError, r"^expected 2D or 3D input \(got 4D input\)"),
        ("BatchNorm1d", (4, 5), ValueError, r"^input must have num_features=3 values along axis 1"),
        ("BatchNorm1d", (1, 3), ValueError, r"^expected more than 1 value per channel"),
    ],
)
def test_batch_norm_bad_input_leaves_the_statistics_unchanged(module, x_shape, error, message):
    bn = getattr(normcore.torch, module)(3)
    bn(torch.randn(4, 3, 2, 2) if module == "BatchNorm2d" else torch.randn(4, 3))
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    with pytest.raises(error, match=message):
        bn(torch.randn(x_shape))
    assert_all_close(dict(bn.state_dict()), before, 0)


def test_batch_norm_constructor_errors():
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\] or None, got 2"):
        normcore.torch.BatchNorm1d(3, momentum=2)
    with pytest.raises(ValueError, match=r"num_features must be >= 1, got 0"):
        normcore.torch.BatchNorm2d(0)


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: normcore.torch.LayerNorm("ab"), TypeError, r"normalized_shape must be a positive"),
        (lambda: normcore.torch.RMSNorm((3, 0)), ValueError, r"normalized_shape must contain"),
        (lambda: normcore.torch.LayerNorm(3, eps=-1.0), ValueError, r"eps must be a finite"),
        (
            lambda: normcore.torch.LayerNorm(3, elementwise_affine="no"),
            TypeError,
            r"elementwise_affine must be True or False, got str",
        ),
        (lambda: normcore.torch.LayerNorm(3, bias=1), TypeError, r"bias must be True or False"),
        (
            lambda: normcore.torch.BatchNorm1d(3, affine="no"),
            TypeError,
            r"affine must be True or False, got str",
        ),
        (
            lambda: normcore.torch.BatchNorm2d(3, track_running_stats=0),
            TypeError,
            r"track_running_stats must be True or False, got int",
        ),
        (lambda: normcore.torch.GroupNorm(2, 4, affine=1), TypeError, r"affine must be True or"),
    ],
)
def test_flag_and_shape_arguments_are_checked(make, error, message):
    with pytest.raises(error, match=message):
        make()

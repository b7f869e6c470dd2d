"""The eps rule: eps must be a normal number of the dtype it is added in, on every path.

Below the smallest normal number of the computation dtype (float32 for
float16/bfloat16 data) eps is 0 or a subnormal that fast paths may flush to
0, and a constant row would give NaN on some backends and the bias on others:
every function refuses it with the same ValueError, before computing.
"""

from __future__ import annotations

import numpy as np
import pytest

import normcore
from normcore._plumbing.config import using_reference_path


def _constant(backend, dtype, shape=(4, 6, 2)):
    return backend.asarray(np.full(shape, 0.0), dtype)


CALLS = {
    "layer_norm": lambda x, eps: normcore.layer_norm(x, eps=eps),
    "rms_norm": lambda x, eps: normcore.rms_norm(x, eps=eps),
    "batch_norm": lambda x, eps: normcore.batch_norm(x, eps=eps),
    "group_norm": lambda x, eps: normcore.group_norm(x, 2, eps=eps),
    "instance_norm": lambda x, eps: normcore.instance_norm(x, eps=eps),
    "layer_norm_backward": lambda x, eps: normcore.layer_norm_backward(x, x, eps=eps).dx,
    "batch_norm_backward": lambda x, eps: normcore.batch_norm_backward(x, x, eps=eps).dx,
    "group_norm_backward": lambda x, eps: normcore.group_norm_backward(x, x, 2, eps=eps).dx,
}


def _computation_dtype(dtype):
    return np.float64 if dtype == "float64" else np.float32


@pytest.mark.parametrize("name", list(CALLS))
def test_eps_below_the_smallest_normal_number_is_refused(backend, dtype, name):
    acc = np.finfo(_computation_dtype(dtype))
    x = _constant(backend, dtype)
    label = acc.dtype.name
    for eps in (float(acc.smallest_normal) / 4, float(acc.smallest_normal) * 2.0**-50):
        with pytest.raises(ValueError, match=rf"^eps=.* is below the smallest normal {label}"):
            CALLS[name](x, eps)
    # the smallest usable eps: a constant row normalizes to exactly the bias (0)
    y = backend.to_numpy(CALLS[name](x, float(acc.smallest_normal)))
    np.testing.assert_array_equal(y, np.zeros(y.shape))


@pytest.mark.parametrize("name", ["layer_norm", "batch_norm", "group_norm"])
def test_eps_beyond_the_largest_number_is_refused(backend, dtype, name):
    if dtype == "float64":
        pytest.skip("every finite Python float is a float64")
    with pytest.raises(ValueError, match=r"^eps=1e\+39 is above the largest float32 number"):
        CALLS[name](_constant(backend, dtype), 1e39)


def test_the_message_names_the_smallest_usable_eps():
    x = np.zeros((2, 3), np.float16)
    with pytest.raises(ValueError) as info:
        normcore.layer_norm(x, eps=1e-50)
    message = str(info.value)
    assert "float32 is the dtype it is added in" in message
    assert "use eps >= 1.175e-38" in message


def test_weight_norm_checks_the_eps_it_adds(backend, dtype):
    """weight_norm adds eps / n (n values per norm): that must be usable too."""
    v = backend.asarray(np.ones((2, 8)), dtype)
    smallest = float(np.finfo(_computation_dtype(dtype)).smallest_normal)
    with pytest.raises(ValueError, match=r"^eps=.* divided by 8 is below the smallest normal"):
        normcore.weight_norm(v, eps=smallest * 4)
    normcore.weight_norm(v, eps=smallest * 8)


@pytest.mark.parametrize(
    "make", [normcore.LayerNorm, normcore.RMSNorm, normcore.BatchNorm, normcore.GroupNorm]
)
def test_modules_refuse_it_at_construction(make):
    args = (1, 2) if make is normcore.GroupNorm else (2,)
    with pytest.raises(ValueError, match=r"below the smallest normal float32"):
        make(*args, eps=1e-50)
    make(*args, eps=1e-300, dtype="float64")  # fine in float64


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_recurrent_layer_norms_follow_it(backend, dtype, cell):
    """rnn and rnn_backward refuse an eps their layer norms cannot add; without them eps is unused.

    On zero inputs and a zero initial state every pre-activation is 0, so with
    the smallest usable eps every cell's layer norm gives its bias (0) and every
    hidden state is exactly 0 (tanh(0), or a gate times tanh(0)).
    """
    path = "reference" if using_reference_path() else "fast"
    if path not in backend.recurrent:
        pytest.skip(f"the recurrent layers' {path} path is not tested on {backend.name}")
    acc = np.finfo(_computation_dtype(dtype))
    label = acc.dtype.name
    like = backend.asarray(np.zeros(1), dtype)
    params = normcore.rnn_params(cell, 3, 4, like=like, dtype=dtype)
    xs = _constant(backend, dtype, (2, 3, 3))
    tiny = float(acc.smallest_normal) / 4
    with pytest.raises(ValueError, match=rf"^eps=.* is below the smallest normal {label}"):
        normcore.rnn(xs, None, params, cell=cell, eps=tiny)
    with pytest.raises(ValueError, match=rf"^eps=.* is below the smallest normal {label}"):
        dhs = _constant(backend, dtype, (2, 3, 4))
        normcore.rnn_backward(dhs, xs, None, params, cell=cell, eps=tiny)
    hs, _ = normcore.rnn(xs, None, params, cell=cell, eps=float(acc.smallest_normal))
    np.testing.assert_array_equal(backend.to_numpy(hs), np.zeros((2, 3, 4)))
    plain = normcore.rnn_params(cell, 3, 4, layer_norm=False, like=like, dtype=dtype)
    normcore.rnn(xs, None, plain, cell=cell, layer_norm=False, eps=tiny)  # no layer norm: unused


@pytest.mark.parametrize("make", [normcore.RNN, normcore.LSTM, normcore.GRU])
def test_recurrent_modules_refuse_it_at_construction(make):
    with pytest.raises(ValueError, match=r"^eps=1e-50 is below the smallest normal float32"):
        make(2, 3, eps=1e-50)
    with pytest.raises(ValueError, match=r"below the smallest normal float32"):
        make(2, 3, eps=1e-40, dtype="float16")  # computed in float32
    make(2, 3, eps=1e-300, dtype="float64")
    make(2, 3, eps=1e-50, layer_norm=False)  # eps is unused without layer norm


@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU"])
def test_torch_recurrent_drop_ins_follow_it(name):
    torch = pytest.importorskip("torch")
    make = getattr(normcore.torch, name)
    with pytest.raises(ValueError, match=r"^eps=1e-50 is below the smallest normal float32"):
        make(2, 3, layer_norm=True, eps=1e-50)
    with pytest.raises(ValueError, match=r"below the smallest normal float32"):
        make(2, 3, layer_norm=True, eps=1e-40, dtype=torch.bfloat16)
    make(2, 3, eps=1e-50)  # torch.nn's cell: no layer norm, eps unused
    module = make(2, 3, layer_norm=True, eps=1e-300, dtype=torch.float64)
    module(torch.zeros(4, 1, 2, dtype=torch.float64))
    module.float()  # the forward checks the dtype the module has now
    with pytest.raises(ValueError, match=r"^eps=1e-300 is below the smallest normal float32"):
        module(torch.zeros(4, 1, 2))


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("LayerNorm", (2,)),
        ("RMSNorm", (2,)),
        ("BatchNorm1d", (2,)),
        ("GroupNorm", (1, 2)),
        ("InstanceNorm1d", (2,)),
        ("SyncBatchNorm", (2,)),
    ],
)
def test_torch_norm_drop_ins_refuse_it_at_construction(name, args):
    torch = pytest.importorskip("torch")
    make = getattr(normcore.torch, name)
    with pytest.raises(ValueError, match=r"^eps=1e-50 is below the smallest normal float32"):
        make(*args, eps=1e-50)
    make(*args, eps=1e-300, dtype=torch.float64)

"""Every bad input raises the documented error, with a message naming the argument."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

import normcore


def _other_library_array(backend):
    """An array from a different library than the backend's (and not one it adopts).

    dask adopts NumPy arrays as parameters (tests/test_dask.py): it gets a strict array.
    """
    if backend.library not in ("numpy", "dask.array"):
        return np.ones(4)
    strict = pytest.importorskip("array_api_strict")
    return strict.ones(4)


FUNCTIONS = {
    "layer_norm": lambda x, **kw: normcore.layer_norm(x, **kw),
    "rms_norm": lambda x, **kw: normcore.rms_norm(
        x, **{k: v for k, v in kw.items() if k != "bias"}
    ),
    "layer_norm_backward": lambda x, **kw: normcore.layer_norm_backward(x, x, **kw),
    "rms_norm_backward": lambda x, **kw: normcore.rms_norm_backward(
        x, x, **{k: v for k, v in kw.items() if k != "bias"}
    ),
}


@pytest.fixture(params=sorted(FUNCTIONS))
def function(request):
    return FUNCTIONS[request.param]


def test_non_array_x_is_a_type_error(function):
    with pytest.raises(TypeError, match=r"x must be an array .* got list"):
        function([[1.0, 2.0]])


@pytest.mark.parametrize("bad", ["int64", "bool", "complex128"])
def test_non_floating_dtype_is_a_type_error(backend, function, bad):
    xp = backend.xp
    x = xp.ones((2, 3), dtype=getattr(xp, bad), device=backend.device)
    with pytest.raises(TypeError, match=r"x must have a real floating-point dtype, got .*"):
        function(x)


def test_gain_from_another_library_names_both(backend, function):
    x = backend.asarray(np.ones((2, 4)), "float32")
    other = _other_library_array(backend)
    with pytest.raises(
        TypeError, match=r"gain must be an array of the same library as x \(.+\), got"
    ):
        function(x, gain=other)


def test_bias_from_another_library(backend):
    x = backend.asarray(np.ones((2, 4)), "float32")
    with pytest.raises(TypeError, match=r"^bias must be an array of the same library"):
        normcore.layer_norm(x, bias=_other_library_array(backend))


def test_gain_that_is_not_an_array(backend):
    x = backend.asarray(np.ones((2, 4)))
    with pytest.raises(TypeError, match=r"gain must be an array .* got list"):
        normcore.layer_norm(x, gain=[1.0] * 4)


def test_float32_x_with_float64_gain_is_a_type_error(backend, function):
    x = backend.asarray(np.ones((2, 4)), "float32")
    gain = backend.asarray(np.ones(4), "float64")
    with pytest.raises(TypeError, match=r"gain must have dtype .*float32.* got .*float64"):
        function(x, gain=gain)


def test_params_on_another_device_is_a_value_error():
    strict = pytest.importorskip("array_api_strict")
    x = strict.ones((2, 4), dtype=strict.float32, device=strict.Device("device1"))
    gain = strict.ones(4, dtype=strict.float32, device=strict.Device("device2"))
    with pytest.raises(
        ValueError, match=r"gain is on device .*device2.* but x is on device .*device1"
    ):
        normcore.layer_norm(x, gain)


@pytest.mark.parametrize("name", ["gain", "bias"])
def test_param_shape_mismatch(backend, name):
    x = backend.asarray(np.ones((2, 3, 4)))
    param = backend.asarray(np.ones(3))
    with pytest.raises(ValueError, match=rf"{name} must have shape \(4,\) .* got shape \(3,\)"):
        normcore.layer_norm(x, **{name: param})
    with pytest.raises(ValueError, match=r"gain must have shape \(4, 3\)"):
        normcore.layer_norm(x, gain=backend.asarray(np.ones((3, 4))), axis=(2, 1))


@pytest.mark.parametrize(
    ("axis", "error", "message"),
    [
        (2, ValueError, r"axis=2 is out of range for an input with 2 dimensions"),
        (-3, ValueError, r"axis=-3 is out of range"),
        ((0, -2), ValueError, r"repeats an axis"),
        ((), ValueError, r"axis must name at least one axis"),
        (1.0, TypeError, r"^axis must be an int or a tuple of ints, got float$"),
        (True, TypeError, r"^axis must be an int or a tuple of ints, got bool$"),
        ("a", TypeError, r"^axis must be an int or a tuple of ints, got str$"),
        (None, TypeError, r"^axis must be an int or a tuple of ints, got NoneType \(axis=None, ev"),
        ((0, None), TypeError, r"^axis must be an int, got NoneType"),
    ],
)
def test_bad_axis(backend, function, axis, error, message):
    x = backend.asarray(np.ones((2, 3)))
    with pytest.raises(error, match=message):
        function(x, axis=axis)


def test_zero_dimensional_input(backend, function):
    x = backend.xp.asarray(1.0, device=backend.device)
    with pytest.raises(ValueError, match=r"x must have at least one dimension, got a 0-d array"):
        function(x)


@pytest.mark.parametrize("eps", [0.0, -1e-5, math.inf, math.nan])
def test_eps_must_be_finite_and_positive(backend, function, eps):
    x = backend.asarray(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"eps must be a finite number > 0, got"):
        function(x, eps=eps)


@pytest.mark.parametrize("eps", ["1e-5", None, True])
def test_eps_must_be_a_number(backend, function, eps):
    x = backend.asarray(np.ones((2, 3)))
    with pytest.raises(TypeError, match=r"eps must be a real number, got"):
        function(x, eps=eps)


def test_dy_must_match_x(backend):
    x = backend.asarray(np.ones((2, 3)), "float32")
    with pytest.raises(ValueError, match=r"dy must have x's shape \(2, 3\), got \(3, 2\)"):
        normcore.layer_norm_backward(backend.asarray(np.ones((3, 2)), "float32"), x)
    with pytest.raises(TypeError, match=r"dy must have dtype .*float32.* like x"):
        normcore.layer_norm_backward(backend.asarray(np.ones((2, 3)), "float64"), x)
    with pytest.raises(TypeError, match=r"dy must be an array of the same library"):
        normcore.layer_norm_backward(_other_library_array(backend), x)


@pytest.mark.parametrize(
    ("backward", "grad_name"),
    [
        (lambda x: normcore.layer_norm_backward(None, x), "dy"),
        (lambda x: normcore.rms_norm_backward(None, x), "dy"),
        (lambda x: normcore.batch_norm_backward(None, x), "dy"),
        (lambda x: normcore.group_norm_backward(None, x, 1), "dy"),
        (lambda x: normcore.instance_norm_backward(None, x), "dy"),
        (lambda x: normcore.weight_norm_backward(None, x), "dw"),
    ],
    ids=["layer", "rms", "batch", "group", "instance", "weight"],
)
def test_backward_without_gradient_is_a_type_error(backend, backward, grad_name):
    x = backend.asarray(np.ones((4, 3)), "float32")
    with pytest.raises(TypeError, match=rf"^{grad_name} must be an array .*got None"):
        backward(x)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"correction": -1}, ValueError, r"correction must be >= 0 and less than .* \(3\)"),
        ({"correction": 3}, ValueError, r"correction must be >= 0 and less than"),
        ({"correction": "1"}, TypeError, r"correction must be a real number"),
        ({"axis": 5}, ValueError, r"axis=5 is out of range"),
    ],
)
def test_moments_bad_arguments(backend, kwargs, error, message):
    x = backend.asarray(np.ones((2, 3)))
    with pytest.raises(error, match=message):
        normcore.moments(x, **{"axis": -1, **kwargs})


def test_keys_that_are_not_strings_get_the_usual_key_error():
    """A state or grads mapping keyed by ints (or mixed): the ValueError, not a crash."""
    layer = normcore.LayerNorm(4)
    state = {0: np.ones(4, np.float32), "bias": np.zeros(4, np.float32)}
    with pytest.raises(ValueError, match=r"missing keys \['gain'\], unexpected keys \[0\]$"):
        layer.load_state_dict(state)
    opt = normcore.optim.SGD({"w": np.zeros(3)}, lr=0.1)
    with pytest.raises(ValueError, match=r"missing \['w'\], unexpected \[0, 'v'\]$"):
        opt.step({0: np.zeros(3), "v": np.zeros(3)})


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: np.ma.masked_array(np.ones((2, 3)), mask=[[0, 1, 0], [0] * 3]), r"mask normcore"),
        (lambda: np.matrix(np.ones((2, 3))), r"numpy.matrix \(always 2-D"),
    ],
    ids=["masked", "matrix"],
)
def test_numpy_masked_arrays_and_matrices_are_refused(make, message):
    with pytest.raises(TypeError, match=rf"^x must be an array .*{message}"):
        normcore.layer_norm(make())
    with pytest.raises(TypeError, match=rf"^gain must be an array .*{message}"):
        normcore.batch_norm(np.ones((3, 3)), gain=make()[0])
    with pytest.raises(TypeError, match=message):
        normcore.BatchNorm(3, dtype="float64")(make())


@pytest.mark.parametrize(
    ("state", "hint"), [("abc", "str$"), (None, "NoneType$"), ([("gain", 1)], r"dict\(\.\.\.\)\)$")]
)
def test_load_state_dict_needs_a_mapping(state, hint):
    bn = normcore.BatchNorm(2)
    with pytest.raises(TypeError, match=rf"^state_dict must be a mapping of names to arr.*{hint}"):
        bn.load_state_dict(state)


def test_arguments_checked_at_construction():
    with pytest.raises(TypeError, match=r"^dtype must be a real floating-point dtype or its na"):
        normcore.Moments(dtype="sum")
    with pytest.raises(TypeError, match=r"^axis must be an int, got str$"):
        normcore.LayerNorm(5, axis="a")
    with pytest.raises(TypeError, match=r"^axis must be an int, got float$"):
        normcore.RMSNorm((2, 3), axis=(-2, -1.0))


@pytest.mark.parametrize("keepdims", [1, "yes", None])
def test_keepdims_must_be_a_bool(keepdims):
    with pytest.raises(TypeError, match=r"^keepdims must be True or False, got"):
        normcore.moments(np.ones((3, 2)), axis=0, keepdims=keepdims)


def _torch():
    return pytest.importorskip("torch")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: normcore.BatchNorm(3, device="nonsense"),
            r"^device='nonsense' is not a device numpy can create arrays on here \(ValueError: ",
        ),
        (
            lambda: normcore.rnn_params("lstm", 3, 4, device="gpu"),
            r"^device='gpu' is not a device numpy can create arrays on here",
        ),
        (
            lambda: normcore.BatchNorm(3, like=_torch(), device="nonsense"),
            r"^device='nonsense' is not a torch device \(.*\); pass e.g. 'cpu', 'cuda'",
        ),
        (
            lambda: normcore.LSTM(3, 4, like=_torch(), device="nonsense"),
            r"^device='nonsense' is not a torch device",
        ),
        (
            lambda: normcore.rnn_params("gru", 3, 4, like=_torch(), device="cuda:99"),
            r"^device='cuda:99': torch has (no CUDA device here|\d+ CUDA device\(s\) here)",
        ),
        (
            lambda: normcore.LayerNorm(3, like=_torch(), device="cuda:99"),
            r"^device='cuda:99': torch has",
        ),
    ],
    ids=["numpy-module", "numpy-rnn_params", "torch-module", "torch-lstm", "cuda:99", "ln-cuda:99"],
)
def test_unknown_devices_are_value_errors_naming_device(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("library", ["numpy", "torch"])
def test_to_an_unknown_device_moves_nothing(library):
    like = _torch() if library == "torch" else np
    bn = normcore.BatchNorm(3, like=like)
    values = np.array if library == "numpy" else lambda t: t.numpy().copy()
    before = {k: values(v) for k, v in bn.state_dict().items()}
    device = bn.device
    with pytest.raises(ValueError, match=r"^device='nonsense' is not a"):
        bn.to("nonsense")
    assert bn.device == device
    for key, value in bn.state_dict().items():
        assert value.device == device
        np.testing.assert_array_equal(values(value), before[key])


SWAPPED = np.dtype(np.float32).newbyteorder("S")  # non-native on any machine


def _swapped(shape):
    return np.arange(np.prod(shape), dtype=np.float32).reshape(shape).astype(SWAPPED)


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: normcore.layer_norm(_swapped((2, 3))), "x"),
        (lambda: normcore.batch_norm(_swapped((4, 3))), "x"),
        (lambda: normcore.group_norm(_swapped((2, 4, 3)), 2), "x"),
        (lambda: normcore.layer_norm(np.ones((2, 3), np.float32), _swapped((3,))), "gain"),
        (lambda: normcore.batch_norm(np.ones((2, 3), np.float32), bias=_swapped((3,))), "bias"),
        (lambda: normcore.BatchNorm(3)(_swapped((4, 3))), "x"),
        (lambda: normcore.LayerNorm(3)(_swapped((4, 3))), "x"),
        (lambda: normcore.GRU(3, 2)(_swapped((2, 1, 3))), "xs"),
        (
            lambda: normcore.rnn(
                np.ones((2, 1, 3), np.float32),
                None,
                {k: v.astype(SWAPPED) for k, v in normcore.rnn_params("gru", 3, 2).items()},
                cell="gru",
            ),
            "params['W_x']",
        ),
    ],
    ids=[
        "layer_norm",
        "batch_norm",
        "group_norm",
        "gain",
        "bias",
        "BatchNorm",
        "LayerNorm",
        "GRU",
        "rnn-params",
    ],
)
def test_byte_swapped_arrays_are_refused_with_the_fix(call, name):
    pattern = (
        rf"^{re.escape(name)} has a byte-swapped dtype '{SWAPPED.str}' \(non-native byte order"
        rf".* convert it first with {re.escape(name)}\.astype\({re.escape(name)}\.dtype"
        r"\.newbyteorder\('='\)\)$"
    )
    with pytest.raises(TypeError, match=pattern):
        call()


def test_the_byte_order_fix_gives_the_native_result():
    x = _swapped((2, 3))
    fixed = normcore.layer_norm(x.astype(x.dtype.newbyteorder("=")))
    assert fixed.dtype == np.float32 and fixed.dtype.isnative
    row = np.arange(3.0)
    want = (row - row.mean()) / np.sqrt(row.var() + 1e-5)
    np.testing.assert_allclose(fixed, [want, want], rtol=1e-6)


def test_a_byte_swapped_module_dtype_is_refused():
    with pytest.raises(TypeError, match=r"^dtype must be in native byte order, got the byte-s"):
        normcore.BatchNorm(3, dtype=np.dtype(np.float64).newbyteorder("S"))


def test_load_state_dict_converts_byte_swapped_arrays():
    """A checkpoint saved on a machine of the other endianness loads with its values."""
    bn = normcore.BatchNorm(3)
    state = {
        "gain": np.array([1.5, 2.0, -1.0]),
        "bias": np.array([0.25, 0.0, 3.0]),
        "running_mean": np.array([1.0, 2.0, 3.0]),
        "running_var": np.array([4.0, 5.0, 6.0]),
        "num_batches_tracked": np.array(7),
    }
    bn.load_state_dict({k: v.astype(v.dtype.newbyteorder("S")) for k, v in state.items()})
    for key, value in bn.state_dict().items():
        assert value.dtype.isnative
        np.testing.assert_array_equal(value, state[key])

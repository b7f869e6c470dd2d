"""float16/bfloat16 running statistics: blended in float32, rounded once, never infinite.

Expected values come from float64 NumPy formulas rounded to the state's dtype
and from torch.nn.BatchNorm1d in float16, never from normcore.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import normcore
from normcore._reference.running import RunningStats, running_update

# The issue's batch: biased variance 90000 of the first feature is beyond float16's
# 65504, but the running variance 0.9 + 0.1 * 120000 is not.
BATCH = [[300, 1], [-300, 2], [300, 3], [-300, 4]]


def _low_precision(backend):
    dtypes = [d for d in backend.dtypes if d in ("float16", "bfloat16")]
    if not dtypes:
        pytest.skip(f"{backend.name} has no float16/bfloat16")
    return dtypes


def _expected(values, dtype, momentum=0.1):
    """The torch convention in float64, rounded once to ``dtype`` (bfloat16 via torch)."""
    x = np.asarray(values, dtype=np.float64)
    mean = (1 - momentum) * 0.0 + momentum * x.mean(axis=0)
    var = (1 - momentum) * 1.0 + momentum * x.var(axis=0, ddof=1)
    if dtype == "float16":
        return mean.astype(np.float16).astype(np.float64), var.astype(np.float16).astype(np.float64)
    torch = pytest.importorskip("torch")
    return tuple(torch.tensor(v).to(torch.bfloat16).double().numpy() for v in (mean, var))


def test_running_variance_beyond_the_input_range_stays_finite(backend):
    for dtype in _low_precision(backend):
        x = backend.asarray(np.array(BATCH), dtype)
        bn = normcore.BatchNorm(2, like=x, dtype=dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # neither a skip nor an overflow warning
            bn(x)
        mean, var = _expected(BATCH, dtype)
        np.testing.assert_array_equal(backend.to_numpy(bn.running_mean).astype(np.float64), mean)
        np.testing.assert_array_equal(backend.to_numpy(bn.running_var).astype(np.float64), var)
        assert int(backend.to_numpy(bn.num_batches_tracked)) == 1
        bn.load_state_dict(bn.state_dict())  # a module accepts its own state


def test_float16_running_variance_matches_torch():
    torch = pytest.importorskip("torch")
    ref = torch.nn.BatchNorm1d(2).half()
    ref(torch.tensor(BATCH, dtype=torch.float16))
    bn = normcore.BatchNorm(2, dtype="float16")
    bn(np.array(BATCH, np.float16))
    np.testing.assert_array_equal(bn.running_var, ref.running_var.numpy())
    np.testing.assert_array_equal(bn.running_mean, ref.running_mean.numpy())


def test_an_update_that_would_store_infinity_is_skipped_and_the_state_loads_back(backend):
    """A running variance beyond float16's range: skipped with a warning, like a NaN batch."""
    if "float16" not in backend.dtypes:
        pytest.skip(f"{backend.name} has no float16")
    x = backend.asarray(np.array(BATCH) * [10, 1], "float16")  # unbiased variance 1.2e7
    bn = normcore.BatchNorm(2, like=x, dtype="float16", momentum=1.0)
    before = {k: backend.to_numpy(v).copy() for k, v in bn.state_dict().items()}
    with pytest.warns(RuntimeWarning, match=r"running statistics overflow (torch\.)?float16"):
        bn(x)
    for key, value in bn.state_dict().items():
        np.testing.assert_array_equal(backend.to_numpy(value), before[key])
    bn.load_state_dict(bn.state_dict())


def _state(backend, dtype):
    return RunningStats(
        backend.asarray(np.zeros(2), dtype),
        backend.asarray(np.ones(2), dtype),
        backend.asarray(np.array(3), "int64"),
    )


# Largest finite value, and the float32 values either side of where rounding goes to inf.
EDGES = {
    "float16": (65504.0, 65519.0, 65520.0),
    "bfloat16": ((2 - 2**-7) * 2.0**127, 3.396e38, 3.3962e38),
}


@pytest.mark.parametrize("synchronous", [True, False])
def test_rounding_to_the_state_dtype_overflows_exactly_where_it_should(backend, synchronous):
    """Keras convention, momentum 0: the new values are the batch's, rounded once."""
    for dtype in _low_precision(backend):
        top, fits, overflows = EDGES[dtype]
        old = _state(backend, dtype)
        mean = backend.asarray(np.array([0.0, 1.0]), "float32")
        fine = running_update(
            old, 4, mean, backend.asarray(np.array([fits, 2.0]), "float32"), 0.0, "keras",
            synchronous=synchronous,
        )  # fmt: skip
        np.testing.assert_array_equal(backend.to_numpy(fine.var).astype(np.float64), [top, 2.0])
        assert int(backend.to_numpy(fine.num_batches_tracked)) == 4
        var = backend.asarray(np.array([overflows, 2.0]), "float32")
        if synchronous:
            with pytest.warns(RuntimeWarning, match="running statistics overflow"):
                assert running_update(old, 4, mean, var, 0.0, "keras") is None
            continue
        kept = running_update(old, 4, mean, var, 0.0, "keras", synchronous=False)
        for have, want in zip(kept, old, strict=True):
            np.testing.assert_array_equal(backend.to_numpy(have), backend.to_numpy(want))

"""Moments and population_stats: the paper's estimator, autograd, devices, errors."""

from __future__ import annotations

import numpy as np
import pytest
from _support import assert_close, assert_like

import normcore
from normcore._plumbing.compat import namespace_of
from normcore._plumbing.validation import check_correction, resolve_dtype


def _paper_algorithm_2(batches, correction=1):
    """Float64 Algorithm 2 of Ioffe & Szegedy: averages of per-batch mean and variance."""
    flat = [np.moveaxis(b, 1, -1).reshape(-1, b.shape[1]) for b in batches if b.size]
    mean = np.mean([f.mean(axis=0) for f in flat], axis=0)
    var = np.mean([f.var(axis=0, ddof=correction) for f in flat], axis=0)
    return mean, var


def test_batch_average_is_the_papers_algorithm_2(backend, rng):
    # Batch means far apart: the exact variance is much larger than Algorithm 2's.
    batches = [rng.normal(shift, 1.5, size=(6, 3, 2)) for shift in (-4.0, 0.0, 9.0)]
    stats = normcore.population_stats(
        [backend.asarray(b) for b in batches], estimator="batch_average"
    )
    # m / (m - 1) * mean of the biased batch variances, m = 12 values per feature
    m = 12
    want_var = m / (m - 1) * np.mean([b.var(axis=(0, 2)) for b in batches], axis=0)
    want_mean = np.mean([b.mean(axis=(0, 2)) for b in batches], axis=0)
    assert_like(stats.mean, backend.asarray(want_mean))
    np.testing.assert_allclose(backend.to_numpy(stats.mean), want_mean, rtol=1e-13)
    np.testing.assert_allclose(backend.to_numpy(stats.var), want_var, rtol=1e-12)
    assert stats.count == 36
    exact = np.concatenate(batches).var(axis=(0, 2), ddof=1)
    assert np.all(exact > 3 * want_var)  # the two estimators really differ here


def test_batch_average_of_unequal_batches_weighs_each_batch_once(backend, rng):
    batches = [rng.normal(s, 2.0, size=(n, 2)) for s, n in ((1.0, 3), (5.0, 0), (-2.0, 11))]
    for correction in (0, 1):
        stats = normcore.population_stats(
            [backend.asarray(b) for b in batches], correction=correction, estimator="batch_average"
        )
        want_mean, want_var = _paper_algorithm_2(batches, correction)
        np.testing.assert_allclose(backend.to_numpy(stats.mean), want_mean, rtol=1e-13)
        np.testing.assert_allclose(backend.to_numpy(stats.var), want_var, rtol=1e-12)


def test_population_stats_never_keep_the_autograd_graph():
    torch = pytest.importorskip("torch")
    x = torch.ones((4, 3), dtype=torch.float64, requires_grad=True)
    for estimator in ("exact", "batch_average"):
        stats = normcore.population_stats([x, 2 * x], estimator=estimator)
        assert not stats.mean.requires_grad and not stats.var.requires_grad
    moments = normcore.Moments().update(x * 3).update(x)
    assert not moments.mean.requires_grad and not moments.m2.requires_grad


def test_moments_reject_a_batch_on_another_device(rng):
    strict = pytest.importorskip("array_api_strict")
    data = rng.normal(size=(4, 3))
    moments = normcore.Moments().update(strict.asarray(data, device=strict.Device("device1")))
    before = np.asarray(moments.mean.to_device(strict.Device("CPU_DEVICE")))
    elsewhere = strict.asarray(data, device=strict.Device("CPU_DEVICE"))
    with pytest.raises(
        ValueError, match=r"x is on device .*CPU_DEVICE.* but the earlier batches were on device"
    ):
        moments.update(elsewhere)
    with pytest.raises(ValueError, match=r"other is on device .*CPU_DEVICE"):
        moments.merge(normcore.Moments().update(elsewhere))
    assert moments.count == 4
    after = np.asarray(moments.mean.to_device(strict.Device("CPU_DEVICE")))
    np.testing.assert_array_equal(after, before)


def test_variance_before_any_values_says_so():
    with pytest.raises(ValueError, match=r"variance\(\) needs values, but no batch with values"):
        normcore.Moments().variance()
    with pytest.raises(ValueError, match=r"no batch with values"):
        normcore.Moments().update(np.zeros((0, 3))).variance(0)
    with pytest.raises(TypeError, match=r"correction must be a real number, got str"):
        normcore.Moments().variance("1")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"estimator": "paper"}, ValueError, r"estimator must be one of \('exact', 'batch_av"),
        ({"estimator": 2}, TypeError, r"estimator must be a str"),
        ({"correction": -1}, ValueError, r"correction must be a finite number >= 0, got -1"),
        ({"correction": None}, TypeError, r"correction must be a real number, got NoneType"),
        ({"dtype": "sum"}, TypeError, r"dtype must be a real floating-point dtype or .*got 'sum'$"),
        ({"dtype": "int32"}, TypeError, r"dtype must be a real floating-point .*got 'int32'$"),
        ({"dtype": np.int32}, TypeError, r"dtype must be a real floating-point dtype, got .*int32"),
        (
            {"estimator": "batch_average"},
            ValueError,
            r"correction must be >= 0 and less than the number of values per feature of every "
            r"batch \(1\), got 1",
        ),
    ],
)
def test_population_stats_bad_arguments(kwargs, error, match):
    batches = [np.ones((3, 2)), np.ones((1, 2))]
    with pytest.raises(error, match=match):
        normcore.population_stats(batches, **kwargs)


def test_check_correction_and_resolve_dtype():
    assert check_correction(1) == 1.0 and check_correction(0.5, 2, "n") == 0.5
    with pytest.raises(ValueError, match=r"less than n \(2\), got 2"):
        check_correction(2, 2, "n")
    with pytest.raises(TypeError, match=r"correction must be a real number, got bool"):
        check_correction(True)
    xp = namespace_of(np.ones(1))
    assert resolve_dtype(xp, "float64") == np.float64
    assert resolve_dtype(xp, None, default=xp.float32) == np.float32
    assert resolve_dtype(xp, None) is None
    with pytest.raises(TypeError, match=r"like 'float80' is not a dtype of"):
        resolve_dtype(xp, "float80", "like")


def test_stream_errors_name_the_offending_batch():
    torch = pytest.importorskip("torch")
    numpy_batch, torch_batch = np.ones((2, 3)), torch.ones(2, 3, dtype=torch.float64)
    with pytest.raises(
        TypeError, match=r"^batches\[1\] must come from the same array library as the earlier "
        r"batches \(numpy.ndarray\), got torch.Tensor$",
    ):  # fmt: skip
        normcore.population_stats([numpy_batch, torch_batch])
    with pytest.raises(ValueError, match=r"^batches\[1\] must have at least 2 dimensions"):
        normcore.population_stats([numpy_batch, np.ones(3)])
    with pytest.raises(TypeError, match=r"^batches must be an iterable of arrays .*got int$"):
        normcore.population_stats(5)
    with pytest.raises(TypeError, match=r"got a single numpy.ndarray; wrap it in a list$"):
        normcore.population_stats(numpy_batch)
    with pytest.raises(
        TypeError,
        match=r"^other must come from the same array library as the earlier batches "
        r"\(numpy.ndarray\), got torch.Tensor$",
    ):
        normcore.Moments().update(numpy_batch).merge(normcore.Moments().update(torch_batch))


def test_moments_over_no_values_say_so(backend):
    x = backend.asarray(np.zeros((0, 3)), "float32")
    with pytest.raises(ValueError, match=r"^the number of values reduced is 0: a mean and var"):
        normcore.moments(x, axis=0)


def test_population_stats_takes_any_iterable_python_can_iterate():
    """Sequences that only define __len__/__getitem__ iterate in Python: they are accepted."""

    class Batches:
        def __init__(self, data):
            self.data = data

        def __len__(self):
            return len(self.data)

        def __getitem__(self, index):
            return self.data[index]

    data = [np.random.default_rng(i).normal(size=(8, 3)) for i in range(4)]
    stats = normcore.population_stats(Batches(data))
    np.testing.assert_allclose(stats.var, np.concatenate(data).var(axis=0, ddof=1), rtol=1e-12)


# -- population statistics (BN paper, Algorithm 2) ------------------------------------------
def test_population_stats_equal_those_of_the_concatenation(backend, rng):
    batches = [rng.normal(1e3, 2.0, size=(n, 3, 2)) for n in (1, 7, 0, 2, 30)]
    stats = normcore.population_stats([backend.asarray(b) for b in batches])
    everything = np.concatenate(batches)
    assert stats.count == everything.shape[0] * 2
    mean, var = everything.mean(axis=(0, 2)), everything.var(axis=(0, 2), ddof=1)
    np.testing.assert_allclose(backend.to_numpy(stats.mean), mean, rtol=1e-14)
    np.testing.assert_allclose(backend.to_numpy(stats.var), var, rtol=1e-11)
    biased = normcore.population_stats([backend.asarray(b) for b in batches], correction=0)
    np.testing.assert_allclose(
        backend.to_numpy(biased.var), var * (stats.count - 1) / stats.count, rtol=1e-11
    )


def test_population_stats_channels_last_and_float64_accumulation(backend, dtype, rng):
    batches = [rng.normal(5.0, 2.0, size=(n, 2, 4)) for n in (3, 9)]
    stats = normcore.population_stats(
        [backend.asarray(b, dtype) for b in batches], axis=-1, dtype="float32"
    )
    everything = np.concatenate([backend.to_numpy(backend.asarray(b, dtype)) for b in batches])
    assert stats.mean.dtype == backend.dtype("float32")
    assert_close(
        backend, stats.var, everything.reshape(-1, 4).var(axis=0, ddof=1), "float32", scale=10
    )


def test_merging_halves_equals_one_pass(backend, rng):
    data = rng.normal(-4.0, 3.0, size=(40, 5))
    one_pass = normcore.Moments()
    for chunk in np.array_split(data, 5):
        one_pass.update(backend.asarray(chunk))
    left, right = normcore.Moments(), normcore.Moments()
    left.update(backend.asarray(data[:13]))
    right.update(backend.asarray(data[13:31])).update(backend.asarray(data[31:]))
    merged = left.merge(right)
    assert left.count == 13 and merged.count == one_pass.count == 40
    np.testing.assert_allclose(
        backend.to_numpy(merged.mean), backend.to_numpy(one_pass.mean), rtol=1e-14
    )
    np.testing.assert_allclose(
        backend.to_numpy(merged.m2), backend.to_numpy(one_pass.m2), rtol=1e-13
    )
    np.testing.assert_allclose(
        backend.to_numpy(merged.variance()), data.var(axis=0, ddof=1), rtol=1e-13
    )
    empty = normcore.Moments().merge(merged)
    np.testing.assert_array_equal(backend.to_numpy(empty.mean), backend.to_numpy(merged.mean))


def test_moments_errors_leave_the_accumulator_unchanged(backend, rng):
    moments = normcore.Moments().update(backend.asarray(rng.normal(size=(4, 3))))
    mean = backend.to_numpy(moments.mean).copy()
    with pytest.raises(
        ValueError, match=r"x has 5 features along axis 1 but the earlier batches had 3"
    ):
        moments.update(backend.asarray(np.ones((2, 5))))
    with pytest.raises(ValueError, match=r"x must have at least 2 dimensions"):
        moments.update(backend.asarray(np.ones(3)))
    with pytest.raises(ValueError, match=r"other has 2 features"):
        moments.merge(normcore.Moments().update(backend.asarray(np.ones((2, 2)))))
    with pytest.raises(TypeError, match=r"other must be a Moments, got"):
        moments.merge(backend.asarray(np.ones((2, 3))))
    with pytest.raises(ValueError, match=r"correction must be >= 0 and less than .* \(4\), got 4"):
        moments.variance(4)
    assert moments.count == 4
    np.testing.assert_array_equal(backend.to_numpy(moments.mean), mean)


def test_population_stats_errors():
    with pytest.raises(
        ValueError, match=r"batches must hold at least one value per feature, got none"
    ):
        normcore.population_stats([np.zeros((0, 3))])
    with pytest.raises(ValueError, match=r"correction must be >= 0 and less than .* \(1\), got 1"):
        normcore.population_stats([np.ones((1, 3))])
    with pytest.raises(TypeError, match=r"axis must be an int, got str"):
        normcore.Moments(axis="1")
    with pytest.raises(
        TypeError, match=r"batches\[1\] must come from the same array library as the earlier"
    ):
        strict = pytest.importorskip("array_api_strict")
        normcore.population_stats([np.ones((2, 3)), strict.ones((2, 3))])
    with pytest.raises(TypeError, match=r"dtype must be a real floating-point .*got 'float80'$"):
        normcore.population_stats([np.ones((2, 3))], dtype="float80")

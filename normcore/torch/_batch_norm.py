"""Drop-ins for ``torch.nn.BatchNorm1d/2d/3d``: normcore's batch norm, torch's running stats.

Each subclasses its ``torch.nn`` namesake (and so
``torch.nn.modules.batchnorm._BatchNorm``): torch's ``__init__`` registers the
parameters and buffers, after normcore has checked the arguments, and
``state_dict`` versioning, ``reset_parameters``, ``extra_repr``, hooks and
``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` are torch's. Only
``forward`` is normcore's.
"""

from __future__ import annotations

import torch

from normcore._functional.batch_norm import batch_norm_forward
from normcore._plumbing.compat import resolve_device
from normcore._plumbing.validation import (
    check_bool,
    check_feature_count,
    check_positive_int,
    check_real,
)
from normcore._reference.running import RunningStats
from normcore.sync import TorchDistributed

from ._checks import check_eps_for, check_tensor, renamed
from ._running_stats import RunningStatsLock

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm"]


class _NormcoreBatchNorm(RunningStatsLock):
    """normcore's checks and ``forward``, before ``torch.nn.BatchNorm*d`` in the MRO."""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__(  # every argument is checked before torch creates anything
            check_positive_int(num_features, "num_features"),
            check_eps_for(eps, dtype),
            check_real(momentum, "momentum", 0.0, 1.0, allow_none=True),
            check_bool(affine, "affine"),
            check_bool(track_running_stats, "track_running_stats"),
            device=resolve_device(torch, device),  # torch.nn: a RuntimeError; here ValueError
            dtype=dtype,
            bias=check_bool(bias, "bias"),
        )
        self._make_running_lock()

    def _reducer(self):
        """The reducer that synchronizes batch statistics; None for a process's own batch."""
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize ``x`` (batch statistics in training, running ones in eval mode)."""
        check_tensor(x)
        self._check_input_dim(x)  # torch's message: "expected 4D input (got 3D input)"
        check_feature_count(x, 1, self.num_features, "num_features", x_name="input")
        # As torch.nn: training updates the buffers only with track_running_stats;
        # eval mode normalizes with them whenever they exist.
        use_running = self.running_mean is not None and (
            self.track_running_stats or not self.training
        )
        if not (self.training and use_running):
            return self._step(x, use_running)
        if torch.compiler.is_compiling():  # a compiled graph runs as one step
            return self._step(x, use_running)
        # Read, update and assign the running statistics as one step: two
        # threads in one module must not both update from the same old values.
        with self._running_lock:
            return self._step(x, use_running)

    def _step(self, x: torch.Tensor, use_running: bool) -> torch.Tensor:
        running = None
        if use_running:
            running = RunningStats(self.running_mean, self.running_var, self.num_batches_tracked)
        try:
            y, update, _ = batch_norm_forward(
                x,
                self.weight,
                self.bias,
                running,
                axis=1,
                eps=self.eps,
                momentum=self.momentum,
                convention="torch",
                training=self.training,
                # Under torch.compile the skip of a non-finite batch happens on the
                # device (no warning): a host read would break the graph.
                synchronous=not torch.compiler.is_compiling(),
                sync=self._reducer() if self.training else None,
            )
        except (TypeError, ValueError) as error:  # named as torch names them
            raise renamed(
                error, x, weight=self.weight, bias=self.bias,
                running_mean=self.running_mean, running_var=self.running_var,
            ) from None  # fmt: skip
        if update is not None:  # in place, as torch does: buffers keep their identity
            with torch.no_grad():
                for buffer, value in zip(running, update, strict=True):
                    buffer.copy_(value)
        return y


_BATCH_DOC = """Drop-in for ``torch.nn.{name}`` computed by :func:`normcore.batch_norm`.

    A subclass of ``torch.nn.{name}``: same constructor, ``state_dict`` keys
    and version (``weight``, ``bias``, ``running_mean``, ``running_var``,
    ``num_batches_tracked``), ``reset_parameters``, ``extra_repr``, hooks and
    ``train()``/``eval()`` behaviour, and ``isinstance`` checks (including
    ``torch.nn.modules.batchnorm._BatchNorm``, which
    ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` looks for) hold. In
    training the batch's statistics normalize and update the running ones
    (``momentum`` None: the cumulative average; the running variance is
    unbiased), in eval mode the running ones normalize. The running update
    is :class:`normcore.BatchNorm`'s, taken under a per-module lock so that
    concurrent training calls from several threads lose no update; a batch
    with NaN or infinite statistics leaves them unchanged with a
    ``RuntimeWarning`` (under ``torch.compile``, where reading the statistics
    on the host would break the graph, it leaves them unchanged without the
    warning). One deliberate difference: an empty training batch changes
    nothing, while ``torch.nn`` counts it in ``num_batches_tracked`` (which,
    with ``momentum=None``, would give the next batch a smaller weight).

    Parameters
    ----------
    num_features : int
        ``C`` of an input ``{shape}``.
    eps : float, default 1e-5
    momentum : float or None, default 0.1
    affine : bool, default True
        Learn ``weight`` (init 1) and ``bias`` (init 0).
    track_running_stats : bool, default True
    device, dtype : optional
        Of the parameters and running statistics.
    bias : bool, default True
        Learn a bias (with ``affine``).

    Examples
    --------
    >>> import torch
    >>> import normcore
    >>> bn = normcore.torch.{name}(3)
    >>> isinstance(bn, torch.nn.{name})
    True
    >>> bn.load_state_dict(torch.nn.{name}(3).state_dict())
    <All keys matched successfully>
    >>> y = bn(torch.randn({example}))
    >>> int(bn.num_batches_tracked)
    1
    """


class BatchNorm1d(_NormcoreBatchNorm, torch.nn.BatchNorm1d):
    __doc__ = _BATCH_DOC.format(name="BatchNorm1d", shape="(N, C) or (N, C, L)", example="4, 3")


class BatchNorm2d(_NormcoreBatchNorm, torch.nn.BatchNorm2d):
    __doc__ = _BATCH_DOC.format(name="BatchNorm2d", shape="(N, C, H, W)", example="4, 3, 2, 2")


class BatchNorm3d(_NormcoreBatchNorm, torch.nn.BatchNorm3d):
    __doc__ = _BATCH_DOC.format(
        name="BatchNorm3d", shape="(N, C, D, H, W)", example="4, 3, 2, 2, 2"
    )


class SyncBatchNorm(_NormcoreBatchNorm, torch.nn.modules.batchnorm._BatchNorm):
    """Drop-in for ``torch.nn.SyncBatchNorm``: batch norm over the batch of every process.

    In training, with ``torch.distributed`` initialized and more than one
    process in ``process_group``, each process normalizes its part of the
    batch with the exact statistics of the whole batch (one
    ``all_gather`` of every process's ``(count, mean, M2)`` per channel,
    merged by Chan's update: parts of any sizes, empty ones included), and
    the backward adds the two per-channel sums it needs over the processes
    (one ``all_reduce``) through normcore's own autograd function. The
    running statistics are updated from the global statistics, identically
    on every process. Eval mode, a single process or no process group
    communicate nothing and are :class:`BatchNorm2d`'s computation. Unlike
    ``torch.nn.SyncBatchNorm``, it runs on CPU (gloo) as well as on CUDA
    (NCCL), for inputs of any rank >= 2.

    A subclass of ``torch.nn.modules.batchnorm._BatchNorm`` with
    ``torch.nn.SyncBatchNorm``'s constructor, ``state_dict`` keys and
    version: checkpoints load in both directions. Not a subclass of
    ``torch.nn.SyncBatchNorm`` itself, on purpose: ``DistributedDataParallel``
    refuses any ``torch.nn.SyncBatchNorm`` in a CPU module ("SyncBatchNorm
    layers only work with GPU modules", torch 2.13), which would rule out the
    CPU training this module makes possible.
    :meth:`convert_sync_batchnorm` converts ``torch.nn`` and
    ``normcore.torch`` batch norms alike. float16/bfloat16 inputs accumulate
    their statistics in float32. See :mod:`normcore.sync` and
    docs/data-parallel.md.

    Parameters
    ----------
    num_features : int
        ``C`` of an input ``(N, C, ...)``.
    eps, momentum, affine, track_running_stats, device, dtype, bias
        As for :class:`BatchNorm2d`.
    process_group : torch.distributed.ProcessGroup, optional
        The processes that share the batch; None is the default group.

    Examples
    --------
    >>> import torch
    >>> import normcore
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8))
    >>> model = normcore.torch.SyncBatchNorm.convert_sync_batchnorm(model)
    >>> type(model[1]).__name__, isinstance(model[1], torch.nn.modules.batchnorm._BatchNorm)
    ('SyncBatchNorm', True)
    >>> y = model(torch.randn(4, 3, 6, 6))  # no process group: this process's batch
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: object | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__(
            num_features,
            eps,
            momentum,
            affine,
            track_running_stats,
            device=device,
            dtype=dtype,
            bias=bias,
        )
        self.process_group = process_group

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:  # torch.nn.SyncBatchNorm's message
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def _reducer(self):
        """``TorchDistributed(process_group)`` when there are other processes to sync with."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return None
        if dist.get_world_size(self.process_group) == 1:
            return None
        return TorchDistributed(self.process_group)

    @classmethod
    def convert_sync_batchnorm(cls, module: torch.nn.Module, process_group: object | None = None):
        """Return ``module`` with every batch norm in it replaced by a :class:`SyncBatchNorm`.

        Converts ``torch.nn.BatchNorm1d/2d/3d``, ``torch.nn.SyncBatchNorm`` and
        ``normcore.torch``'s batch norms (any ``torch.nn.modules.batchnorm._BatchNorm``),
        recursively. The new modules share the old ones' parameters and
        running statistics (the same tensors) and keep their training mode;
        the ``module`` passed in is changed in place where it contains
        batch norms, and returned (a new module where it is one itself).
        """
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            state = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
            converted = cls(
                module.num_features,
                module.eps,
                module.momentum,
                module.affine,
                module.track_running_stats,
                process_group,
                device=state[0].device if state else None,  # replaced below: no copy
                bias=module.bias is not None or not module.affine,
            )
            if module.affine:
                converted.weight = module.weight
                converted.bias = module.bias
            converted.running_mean = module.running_mean
            converted.running_var = module.running_var
            converted.num_batches_tracked = module.num_batches_tracked
            converted.training = module.training
            if hasattr(module, "qconfig"):
                converted.qconfig = module.qconfig
            return converted
        for name, child in module.named_children():
            replacement = cls.convert_sync_batchnorm(child, process_group)
            if replacement is not child:
                module.add_module(name, replacement)
        return module

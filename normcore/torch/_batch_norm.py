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
from normcore._plumbing.validation import (
    check_bool,
    check_eps,
    check_feature_count,
    check_positive_int,
    check_real,
)
from normcore._reference.running import RunningStats

from ._running_stats import RunningStatsLock

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d"]


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
            check_eps(eps),
            check_real(momentum, "momentum", 0.0, 1.0, allow_none=True),
            check_bool(affine, "affine"),
            check_bool(track_running_stats, "track_running_stats"),
            device,
            dtype,
            bias=check_bool(bias, "bias"),
        )
        self._make_running_lock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize ``x`` (batch statistics in training, running ones in eval mode)."""
        self._check_input_dim(x)  # torch's message: "expected 4D input (got 3D input)"
        check_feature_count(x, 1, self.num_features, "num_features")
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
        )
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

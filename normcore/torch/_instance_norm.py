"""Drop-ins for ``torch.nn.InstanceNorm1d/2d/3d``, computed by :func:`normcore.instance_norm`.

Each subclasses its ``torch.nn`` namesake (``torch.nn.modules.instancenorm._InstanceNorm``):
torch's ``__init__``, ``state_dict`` handling, ``reset_parameters`` and
``extra_repr``; normcore's checks and ``forward``.

torch's running statistics for instance norm, followed here exactly: in
training with ``track_running_stats`` each example's channel is normalized by
its own statistics, and the running ones move towards their average over the
batch, ``running_mean <- (1 - momentum) * running_mean + momentum * mean_n(mean[n, c])``
and the same for ``running_var`` with each instance's *unbiased* variance;
``num_batches_tracked`` is never incremented, and ``momentum=None`` (torch
passes 0) leaves the running statistics unchanged. In eval mode with
``track_running_stats`` every example is normalized by the running
statistics (:func:`normcore.batch_norm` with ``mean=``/``var=``).
"""

from __future__ import annotations

import math
import warnings

import torch

from normcore._functional.batch_norm import batch_norm
from normcore._functional.group_norm import instance_norm, instance_norm_forward
from normcore._plumbing.compat import resolve_device
from normcore._plumbing.validation import (
    check_bool,
    check_feature_count,
    check_positive_int,
    check_real,
)
from normcore._reference.running import RunningStats, running_update

from ._checks import check_eps_for, check_tensor, renamed
from ._running_stats import RunningStatsLock

__all__ = ["InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d"]


class _NormcoreInstanceNorm(RunningStatsLock):
    """normcore's checks and ``forward``, before ``torch.nn.InstanceNorm*d`` in the MRO."""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = False,
        track_running_stats: bool = False,
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
            resolve_device(torch, device),  # torch.nn: a RuntimeError; normcore: ValueError
            dtype,
            bias=check_bool(bias, "bias"),
        )
        self._make_running_lock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Instance-normalize ``x`` (``(N, C, *spatial)``, or unbatched ``(C, *spatial)``)."""
        check_tensor(x)
        self._check_input_dim(x)  # torch's message: "expected 3D or 4D input (got 2D input)"
        unbatched = x.dim() == self._get_no_batch_dim()
        channel_axis = 0 if unbatched else 1
        if x.shape[channel_axis] != self.num_features:
            if self.affine or self.track_running_stats:
                check_feature_count(
                    x, channel_axis, self.num_features, "num_features", x_name="input"
                )
            # As torch.nn: without parameters or running statistics num_features is unused.
            warnings.warn(
                f"input has {x.shape[channel_axis]} channels along axis {channel_axis} but "
                f"num_features={self.num_features}; num_features is unused (affine=False, "
                "track_running_stats=False)",
                stacklevel=2,
            )
        try:
            if unbatched:
                return self._normalize(x.unsqueeze(0)).squeeze(0)
            return self._normalize(x)
        except (TypeError, ValueError) as error:  # named as torch names them
            raise renamed(
                error, x, weight=self.weight, bias=self.bias,
                running_mean=self.running_mean, running_var=self.running_var,
            ) from None  # fmt: skip

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        if self.track_running_stats and not self.training:
            return batch_norm(
                x, self.weight, self.bias, mean=self.running_mean, var=self.running_var,
                eps=self.eps,
            )  # fmt: skip
        if not (self.training and self.track_running_stats and self.momentum is not None):
            return instance_norm(x, self.weight, self.bias, eps=self.eps)
        if torch.compiler.is_compiling():  # a compiled graph runs as one step
            return self._track(x)
        with self._running_lock:  # read, update and assign the statistics as one step
            return self._track(x)

    def _track(self, x: torch.Tensor) -> torch.Tensor:
        y, mean, var = instance_norm_forward(x, self.weight, self.bias, axis=1, eps=self.eps)
        if mean is None:  # an empty batch has no statistics: nothing changes
            return y
        running = RunningStats(self.running_mean, self.running_var, self.num_batches_tracked)
        update = running_update(
            running,
            math.prod(x.shape[2:]),  # values per instance: the unbiased variance's m
            torch.mean(mean, dim=0),
            torch.mean(var, dim=0),  # the mean of biased variances, unbiased by m / (m - 1)
            self.momentum,
            "torch",
            # Under torch.compile a non-finite batch is skipped on the device
            # (no warning): a host read would break the graph.
            synchronous=not torch.compiler.is_compiling(),
        )
        if update is not None:  # torch.nn never counts instance-norm batches
            with torch.no_grad():
                self.running_mean.copy_(update.mean)
                self.running_var.copy_(update.var)
        return y


_INSTANCE_DOC = """Drop-in for ``torch.nn.{name}`` computed by :func:`normcore.instance_norm`.

    A subclass of ``torch.nn.{name}``: same constructor (``affine`` and
    ``track_running_stats`` default to False), ``state_dict`` keys and
    handling, ``reset_parameters``, ``extra_repr`` and ``isinstance`` checks.
    Each example's channel is normalized over its spatial axes. With
    ``track_running_stats`` the running statistics follow ``torch.nn``
    exactly: in training they move towards the batch average of each
    instance's mean and unbiased variance (``momentum=None`` leaves them
    unchanged and ``num_batches_tracked`` stays 0, as in ``torch.nn``), and in
    eval mode they normalize every example. The update is taken under a
    per-module lock (concurrent training calls lose none); a batch with NaN
    or infinite statistics leaves the running statistics unchanged with a
    ``RuntimeWarning`` (without it under ``torch.compile``), where ``torch.nn``
    would store the NaN.

    Parameters
    ----------
    num_features : int
        ``C`` of an input ``{shape}``.
    eps : float, default 1e-5
    momentum : float or None, default 0.1
    affine : bool, default False
        Learn a per-channel ``weight`` (init 1) and ``bias`` (init 0).
    track_running_stats : bool, default False
    device, dtype : optional
        Of the parameters and running statistics.
    bias : bool, default True
        Learn a bias (with ``affine``).

    Examples
    --------
    >>> import torch
    >>> import normcore
    >>> norm = normcore.torch.{name}(3, affine=True)
    >>> isinstance(norm, torch.nn.{name})
    True
    >>> norm.load_state_dict(torch.nn.{name}(3, affine=True).state_dict())
    <All keys matched successfully>
    >>> norm(torch.randn({example})).shape
    torch.Size([{example}])
    """


class InstanceNorm1d(_NormcoreInstanceNorm, torch.nn.InstanceNorm1d):
    __doc__ = _INSTANCE_DOC.format(
        name="InstanceNorm1d", shape="(N, C, L) or (C, L)", example="4, 3, 5"
    )


class InstanceNorm2d(_NormcoreInstanceNorm, torch.nn.InstanceNorm2d):
    __doc__ = _INSTANCE_DOC.format(
        name="InstanceNorm2d", shape="(N, C, H, W) or (C, H, W)", example="4, 3, 2, 2"
    )


class InstanceNorm3d(_NormcoreInstanceNorm, torch.nn.InstanceNorm3d):
    __doc__ = _INSTANCE_DOC.format(
        name="InstanceNorm3d", shape="(N, C, D, H, W) or (C, D, H, W)", example="4, 3, 2, 2, 2"
    )

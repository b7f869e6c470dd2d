"""Drop-ins for ``torch.nn.BatchNorm1d/2d/3d``: normcore's batch norm, torch's running stats."""

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

from ._affine import affine_parameters, reset_affine

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d"]


class _BatchNorm(torch.nn.Module):
    """Batch norm over axis 1 with torch's running statistics; subclasses fix the input rank."""

    _ranks: tuple[int, ...] = ()

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
        super().__init__()
        self.num_features = check_positive_int(num_features, "num_features")
        self.eps = check_eps(eps)
        self.momentum = check_real(momentum, "momentum", 0.0, 1.0, allow_none=True)
        self.affine = check_bool(affine, "affine")
        self.track_running_stats = check_bool(track_running_stats, "track_running_stats")
        factory = {"device": device, "dtype": dtype}
        affine_parameters(self, (self.num_features,), affine, bias, factory)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(self.num_features, **factory))
            self.register_buffer("running_var", torch.ones(self.num_features, **factory))
            self.register_buffer(
                "num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device)
            )
        else:
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                self.register_buffer(name, None)

    # torch.nn's state_dict version: 2 has num_batches_tracked, 1 (torch < 0.4.1) did not.
    _version = 2

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors
    ):
        # Old checkpoints that torch.nn loads must load here too: a version-1
        # state has no num_batches_tracked, and torch.nn keeps the module's count.
        key = prefix + "num_batches_tracked"
        version = local_metadata.get("version")
        if self.track_running_stats and (version is None or version < 2) and key not in state_dict:
            state_dict[key] = self.num_batches_tracked.detach().clone()
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors
        )

    def reset_running_stats(self) -> None:
        """Set the running mean to 0, the running variance to 1 and the count to 0."""
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        """Reset the running statistics, the weight to 1 and the bias to 0."""
        self.reset_running_stats()
        reset_affine(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize ``x`` (batch statistics in training, running ones in eval mode)."""
        if x.dim() not in self._ranks:
            ranks = " or ".join(f"{r}D" for r in self._ranks)
            raise ValueError(f"expected {ranks} input (got {x.dim()}D input)")
        check_feature_count(x, 1, self.num_features, "num_features")
        running = None
        if self.running_mean is not None:
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

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, track_running_stats={self.track_running_stats}"
        )


_BATCH_DOC = """Drop-in for ``torch.nn.{name}`` computed by :func:`normcore.batch_norm`.

    Same constructor, ``state_dict`` keys (``weight``, ``bias``,
    ``running_mean``, ``running_var``, ``num_batches_tracked``) and
    ``train()``/``eval()`` behaviour: in training the batch's statistics
    normalize and update the running ones (``momentum`` None: the cumulative
    average; the running variance is unbiased), in eval mode the running ones
    normalize. The running update is :class:`normcore.BatchNorm`'s; a batch
    with NaN or infinite statistics leaves them unchanged with a ``RuntimeWarning``
    (under ``torch.compile``, where reading the statistics on the host would
    break the graph, it leaves them unchanged without the warning).
    One deliberate difference: an empty training batch changes nothing, while
    ``torch.nn`` counts it in ``num_batches_tracked`` (which, with
    ``momentum=None``, would give the next batch a smaller weight).
    Checkpoints without ``num_batches_tracked`` (``state_dict`` version 1, as
    ``torch.nn`` wrote before torch 0.4.1) load as in ``torch.nn``.

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
    >>> bn.load_state_dict(torch.nn.{name}(3).state_dict())
    <All keys matched successfully>
    >>> y = bn(torch.randn({example}))
    >>> int(bn.num_batches_tracked)
    1
    """


class BatchNorm1d(_BatchNorm):
    __doc__ = _BATCH_DOC.format(name="BatchNorm1d", shape="(N, C) or (N, C, L)", example="4, 3")
    _ranks = (2, 3)


class BatchNorm2d(_BatchNorm):
    __doc__ = _BATCH_DOC.format(name="BatchNorm2d", shape="(N, C, H, W)", example="4, 3, 2, 2")
    _ranks = (4,)


class BatchNorm3d(_BatchNorm):
    __doc__ = _BATCH_DOC.format(
        name="BatchNorm3d", shape="(N, C, D, H, W)", example="4, 3, 2, 2, 2"
    )
    _ranks = (5,)

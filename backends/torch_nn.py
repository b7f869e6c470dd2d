"""PyTorch modules: drop-ins for torch.nn's normalization and recurrent layers.

``torch.nn.Module`` subclasses with the constructor arguments, parameters and
``state_dict`` keys of their ``torch.nn`` namesakes (``LayerNorm``, ``RMSNorm``,
``BatchNorm1d/2d/3d``, ``GroupNorm``; ``RNN``, ``LSTM``, ``GRU`` with an extra
``layer_norm`` flag), whose ``forward`` calls normcore's functional API
(:func:`normcore.layer_norm`, :func:`normcore.batch_norm`, :func:`normcore.rnn`, ...).
Checkpoints load in either direction; gradients come from autograd. Reached as
``normcore.torch``, which imports this module (and torch) on first access.
"""

from __future__ import annotations

import torch

import normcore
from normcore._batchnorm import RunningStats, batch_norm_forward
from normcore._compat import namespace_of
from normcore._layer_modules import check_normalized_shape
from normcore._registry import adapter_for
from normcore._validation import (
    check_bool,
    check_eps,
    check_feature_count,
    check_num_groups,
    check_positive_int,
    check_real,
)

from .torch_nn_rnn import GRU, LSTM, RNN

# Find torch's adapter and namespace now, while Python runs normally:
# torch.compile cannot trace the first adapter lookup (it reads the entry
# points) and warns about array-api-compat's cached type probes; it traces the
# cached lookups cleanly.
for _tensor in (torch.empty(0), torch.nn.Parameter(torch.empty(0))):
    adapter_for(_tensor)
    namespace_of(_tensor)
del _tensor

__all__ = [
    "GRU",
    "LSTM",
    "RNN",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "GroupNorm",
    "LayerNorm",
    "RMSNorm",
]


def _affine_parameters(module, shape, affine, bias, factory) -> None:
    """Register ``weight`` (ones) and ``bias`` (zeros), or None where absent."""
    check_bool(bias, "bias")
    weight = torch.nn.Parameter(torch.ones(shape, **factory)) if affine else None
    module.register_parameter("weight", weight)
    bias_value = torch.nn.Parameter(torch.zeros(shape, **factory)) if affine and bias else None
    module.register_parameter("bias", bias_value)


def _reset_affine(module) -> None:
    """Set ``module.weight`` to 1 and ``module.bias`` to 0 where they exist."""
    if module.weight is not None:
        torch.nn.init.ones_(module.weight)
    if module.bias is not None:
        torch.nn.init.zeros_(module.bias)


class _TrailingNorm(torch.nn.Module):
    """Parameters ``weight`` (and ``bias``) over the trailing axes, shared by both modules."""

    def __init__(self, normalized_shape, eps, elementwise_affine, bias, device, dtype) -> None:
        super().__init__()
        self.normalized_shape = check_normalized_shape(normalized_shape)
        self.eps = eps if eps is None else check_eps(eps)  # None: RMSNorm's per-dtype default
        self.elementwise_affine = check_bool(elementwise_affine, "elementwise_affine")
        factory = {"device": device, "dtype": dtype}
        _affine_parameters(self, self.normalized_shape, elementwise_affine, bias, factory)

    def reset_parameters(self) -> None:
        """Set the weight to 1 and the bias to 0."""
        _reset_affine(self)

    def _axes(self, x: torch.Tensor) -> tuple[int, ...]:
        count = len(self.normalized_shape)
        got = tuple(x.shape[x.ndim - count :]) if x.ndim >= count else tuple(x.shape)
        if got != self.normalized_shape:
            raise ValueError(
                f"input must end with normalized_shape {self.normalized_shape}, "
                f"got shape {tuple(x.shape)}"
            )
        return tuple(range(-count, 0))

    def extra_repr(self) -> str:
        return (
            f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
        )


class LayerNorm(_TrailingNorm):
    """Drop-in for ``torch.nn.LayerNorm`` computed by :func:`normcore.layer_norm`.

    Parameters
    ----------
    normalized_shape : int or tuple of int
        Sizes of the trailing axes normalized over.
    eps : float, default 1e-5
        Added to the variance inside the square root.
    elementwise_affine : bool, default True
        Learn ``weight`` (initialized to 1) and, with ``bias=True``, ``bias`` (0).
    bias : bool, default True
        Learn a bias (only with ``elementwise_affine``).
    device, dtype : optional
        Of the parameters, as for ``torch.nn.LayerNorm``.

    Examples
    --------
    >>> import torch
    >>> import normcore
    >>> layer = normcore.torch.LayerNorm(3)
    >>> layer.load_state_dict(torch.nn.LayerNorm(3).state_dict())
    <All keys matched successfully>
    >>> layer(torch.tensor([[1.0, 2.0, 4.0]])).detach().round(decimals=4)
    tensor([[-1.0690, -0.2673,  1.3363]])
    """

    def __init__(
        self,
        normalized_shape,
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(normalized_shape, eps, elementwise_affine, bias, device, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Layer-normalize ``x`` over its trailing ``normalized_shape`` axes."""
        return normcore.layer_norm(x, self.weight, self.bias, axis=self._axes(x), eps=self.eps)


class RMSNorm(_TrailingNorm):
    """Drop-in for ``torch.nn.RMSNorm`` computed by :func:`normcore.rms_norm`.

    Parameters
    ----------
    normalized_shape : int or tuple of int
        Sizes of the trailing axes normalized over.
    eps : float, optional
        Added to the mean square; None (the default, as in torch) uses
        ``torch.finfo(x.dtype).eps`` of each input.
    elementwise_affine : bool, default True
        Learn ``weight`` (initialized to 1).
    device, dtype : optional
        Of the parameters.

    Examples
    --------
    >>> import torch
    >>> import normcore
    >>> layer = normcore.torch.RMSNorm(2, eps=1e-6)
    >>> layer(torch.tensor([[3.0, 4.0]])).detach().round(decimals=4)
    tensor([[0.8485, 1.1314]])
    """

    def __init__(
        self,
        normalized_shape,
        eps: float | None = None,
        elementwise_affine: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(normalized_shape, eps, elementwise_affine, False, device, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """RMS-normalize ``x`` over its trailing ``normalized_shape`` axes."""
        eps = torch.finfo(x.dtype).eps if self.eps is None else self.eps
        return normcore.rms_norm(x, self.weight, axis=self._axes(x), eps=eps)


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
        device=None,
        dtype=None,
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
        _affine_parameters(self, (self.num_features,), affine, bias, factory)
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
        _reset_affine(self)

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


class GroupNorm(torch.nn.Module):
    """Drop-in for ``torch.nn.GroupNorm`` computed by :func:`normcore.group_norm`.

    Parameters
    ----------
    num_groups : int
        Number of groups; must divide ``num_channels``.
    num_channels : int
        ``C`` of an input ``(N, C, *)``.
    eps : float, default 1e-5
    affine : bool, default True
        Learn a per-channel ``weight`` (init 1) and ``bias`` (init 0).
    device, dtype : optional
        Of the parameters.
    bias : bool, default True
        Learn a bias (with ``affine``).

    Examples
    --------
    >>> import torch
    >>> import normcore
    >>> gn = normcore.torch.GroupNorm(2, 4)
    >>> gn(torch.arange(8.0).reshape(1, 4, 2)).detach().round(decimals=4)
    tensor([[[-1.3416, -0.4472],
             [ 0.4472,  1.3416],
             [-1.3416, -0.4472],
             [ 0.4472,  1.3416]]])
    """

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        device=None,
        dtype=None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.num_channels = check_positive_int(num_channels, "num_channels")
        self.num_groups = check_num_groups(num_groups, self.num_channels)
        self.eps = check_eps(eps)
        self.affine = check_bool(affine, "affine")
        _affine_parameters(
            self, (self.num_channels,), affine, bias, {"device": device, "dtype": dtype}
        )

    def reset_parameters(self) -> None:
        """Set the weight to 1 and the bias to 0."""
        _reset_affine(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Group-normalize ``x`` of shape ``(N, C, *)``."""
        check_feature_count(x, 1, self.num_channels, "num_channels")
        return normcore.group_norm(x, self.num_groups, self.weight, self.bias, eps=self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"

"""BatchNorm: batch normalization with running statistics, as a small stateful object."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from .._functional.batch_norm import (
    BatchMoments,
    batch_norm_backward,
    batch_norm_pass,
    prepare_batch_norm,
)
from .._functional.sync import SyncedStatistics, check_reducer, synced_backward
from .._plumbing.validation import (
    check_bool,
    check_choice,
    check_correction,
    check_eps,
    check_feature_count,
    check_int,
    check_keys,
    check_positive_int,
    check_real,
)
from .._reference.running import CONVENTIONS, RunningStats, running_update
from ..sync import Reducer
from .module import Module

__all__ = ["BatchNorm"]

_TORCH_NAMES = {"gain": "weight"}  # normcore name -> torch BatchNorm state_dict key


class _ConventionDefault:
    def __repr__(self) -> str:
        return "<the convention's default: 0.1 for 'torch', 0.99 for 'keras'>"


CONVENTION_DEFAULT: Any = _ConventionDefault()


class BatchNorm(Module):
    """Batch normalization with running statistics (Ioffe & Szegedy, 2015).

    In training, ``bn(x)`` normalizes with the batch's mean and biased
    variance per feature and updates ``running_mean``/``running_var``; in
    inference, ``bn(x, training=False)`` normalizes with the running ones.

    Parameters
    ----------
    num_features : int
        Size of the feature (channel) axis of the inputs.
    axis : int, default 1
        The feature axis: 1 for ``N x D`` and ``N x C x H x W``, -1 for
        channels-last inputs.
    eps : float, default 1e-5
        Added to the variance inside the square root.
    momentum : float or None, default: the convention's (0.1 for ``"torch"``, 0.99 for ``"keras"``)
        Weight of the running average, in [0, 1]. None: the exact cumulative
        average of every batch seen (either convention).
    affine : bool, default True
        Learn a per-feature ``gain`` (init 1) and ``bias`` (init 0).
    track_running_stats : bool, default True
        Keep running statistics. Without them, inference uses batch
        statistics too (as PyTorch does).
    convention : {"torch", "keras"}, default "torch"
        How running statistics are updated:

        * ``"torch"`` (PyTorch): ``new = (1 - momentum) * old + momentum * batch``
          and ``running_var`` stores the *unbiased* batch variance.
        * ``"keras"`` (Keras, Flax): ``new = momentum * old + (1 - momentum) * batch``
          and ``running_var`` stores the *biased* batch variance. (Keras's own
          default ``eps`` is 1e-3; pass it explicitly to match.)

        Normalization in training uses the biased batch variance unless
        ``correction`` says otherwise.
    correction : float, default 0
        Degrees-of-freedom correction of the batch variance used to
        *normalize* in training (see :func:`batch_norm`): 1 normalizes with the
        unbiased variance, as Ba et al. (2016) do for batch norm at batch size
        4. The running statistics follow ``convention`` whatever it is.
    sync : normcore.sync.Reducer, optional
        Synchronized batch norm for data-parallel training: in training the
        statistics are those of the whole batch spread over the processes
        the reducer connects (every process calls the module alike), and the
        running statistics are updated from them, identically everywhere.
        One collective per training call and one per :meth:`backward`;
        inference communicates nothing. See :mod:`normcore.sync`.
    like, device, dtype
        Library, device and dtype of the arrays (see :class:`normcore.Module`);
        NumPy float32 by default.

    Attributes
    ----------
    gain, bias : array or None
        Per-feature parameters (None with ``affine=False``).
    running_mean, running_var : array or None
        Running statistics, init 0 and 1 (None without ``track_running_stats``).
    num_batches_tracked : array or None
        0-d int64 count of training batches that updated the statistics.

    Notes
    -----
    *Atomic updates.* Every argument is checked before anything is computed;
    new running values are computed first and assigned together, so a call
    that raises leaves every array bit-identical.

    *Non-finite batches.* If a training batch's mean or variance is NaN or
    infinite, the output is still returned (it carries the NaN), but the
    running statistics and ``num_batches_tracked`` are **not** updated and a
    ``RuntimeWarning`` is issued. Turn the warning into an error with
    ``warnings.simplefilter("error", RuntimeWarning)`` to stop training
    instead; the state is unchanged either way. (This check reads one scalar
    back from the device per training call.)

    *Threads.* Training calls from several threads each update the running
    statistics exactly once, in some sequential order (the update is computed
    with no lock held and installed under the module's lock if the statistics
    it started from are still current, computed again otherwise). Pair each
    ``backward`` with its forward in one thread: it uses the last forward's
    saved values.

    *float16/bfloat16 state.* The running update is computed in float32 and
    rounded once; an update that would store an infinity is skipped with a
    ``RuntimeWarning``, like a non-finite batch.

    *PyTorch interop.* :meth:`state_dict`/:meth:`load_state_dict` use
    normcore's names (``gain``); :meth:`to_torch_state_dict` and
    :meth:`load_torch_state_dict` use ``torch.nn.BatchNorm*d``'s (``weight``).

    Examples
    --------
    >>> import numpy as np
    >>> import normcore
    >>> bn = normcore.BatchNorm(3)
    >>> x = np.random.default_rng(0).normal(2.0, 3.0, size=(16, 3, 4, 4)).astype(np.float32)
    >>> y = bn(x)  # training: batch statistics, running statistics updated
    >>> bn.num_batches_tracked
    array(1)
    >>> dx = bn.backward(np.ones_like(y))
    >>> sorted(bn.grads())
    ['bias', 'gain']
    >>> y_eval = bn(x, training=False)  # inference: running statistics
    >>> y_eval.shape, y_eval.dtype
    ((16, 3, 4, 4), dtype('float32'))
    """

    _parameter_names = ("gain", "bias")
    _buffer_names = ("running_mean", "running_var", "num_batches_tracked")

    def __init__(
        self,
        num_features: int,
        *,
        axis: int = 1,
        eps: float = 1e-5,
        momentum: float | None = CONVENTION_DEFAULT,
        affine: bool = True,
        track_running_stats: bool = True,
        convention: str = "torch",
        correction: float = 0,
        sync: Reducer | None = None,
        like: Any = None,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        num_features = check_positive_int(num_features, "num_features")
        axis = check_int(axis, "axis")
        affine = check_bool(affine, "affine")
        track_running_stats = check_bool(track_running_stats, "track_running_stats")
        convention = check_choice(convention, tuple(CONVENTIONS), "convention")
        if momentum is CONVENTION_DEFAULT:
            momentum = CONVENTIONS[convention]
        self.momentum = check_real(momentum, "momentum", 0.0, 1.0, allow_none=True)
        self.eps = check_eps(eps)
        self.correction = check_correction(correction, None)
        self.sync = check_reducer(sync)
        super().__init__(like=like, device=device, dtype=dtype)
        self._check_eps(self.eps)
        self.num_features = num_features
        self.axis = axis
        self.affine = affine
        self.track_running_stats = track_running_stats
        self.convention = convention
        shape = (self.num_features,)
        self._init_affine(shape, affine)
        tracked = track_running_stats
        self.running_mean = self._new(0.0, shape) if tracked else None
        self.running_var = self._new(1.0, shape) if tracked else None
        self.num_batches_tracked = self._new(0, (), self._xp.int64) if tracked else None

    # -- forward and backward ----------------------------------------------------
    def __call__(self, x: Any, training: bool | None = None) -> Any:
        """Normalize ``x``; in training also update the running statistics.

        ``training`` None (the default) follows :attr:`training`, which
        :meth:`train`/:meth:`eval` set (True for a new module).

        Raises
        ------
        TypeError
            If ``x`` is not an array of the module's library, or its dtype is
            not the module's (float16/bfloat16 ``x`` is accepted by a float32
            module), or ``training`` is neither None nor a bool.
        ValueError
            If ``x`` lives on another device, has fewer than 2 dimensions or
            not ``num_features`` features along ``axis``, or (in training) a
            single value per feature.
        """
        training = self.training if training is None else check_bool(training, "training")
        self._check_input(x)
        check_feature_count(x, self.axis, self.num_features, "num_features")
        running = None if self.running_mean is None else self._running()
        y, moments, used = batch_norm_pass(
            x,
            self.gain,
            self.bias,
            running,
            axis=self.axis,
            eps=self.eps,
            training=training,
            correction=self.correction,
            sync=self.sync,
        )
        skipped = self._update_running(moments) if moments is not None else []
        self._saved = (x, self.gain, self.bias, used)
        for message in skipped:  # warned with no lock held: a warning hook is user code
            warnings.warn(message, RuntimeWarning, stacklevel=2)
        return y

    def _update_running(self, moments: BatchMoments) -> list[str]:
        """Blend ``moments`` into the running statistics; return why the update was skipped.

        Concurrent calls: the new values are computed from a snapshot of the
        running statistics with no lock held (library code may warn, and a
        warning hook is user code) and assigned under the lock only if the
        snapshot is still current; otherwise they are computed again from the
        newer statistics. So every update is applied once, in some sequential order.
        """
        while True:
            with self._lock:  # a snapshot no assignment is halfway through
                running = self._running()
            skipped: list[str] = []
            update = running_update(
                running, *moments, self.momentum, self.convention, on_skip=skipped.append
            )
            with self._lock:
                if all(a is b for a, b in zip(self._running(), running, strict=True)):
                    if update is not None:
                        self.running_mean, self.running_var, self.num_batches_tracked = update
                    return skipped

    def backward(self, dy: Any) -> Any:
        """Return ``dx`` for the last forward call and store ``dgain``/``dbias``.

        After a training call the gradient flows through the batch statistics;
        after an inference call the (running) statistics are constants. The
        gradients are those of the parameters as they were in the forward call.
        """
        x, gain, bias, used = self._require_saved()
        if isinstance(used, SyncedStatistics):  # the forward's global statistics
            call = prepare_batch_norm(
                x, gain, bias, self.axis, self.eps, None, None, dy=dy, sync=self.sync
            )
            grads = synced_backward(call, dy, x, gain, bias, used, self.sync)
            return self._store_gradients(grads)
        mean, var, correction = used
        grads = batch_norm_backward(
            dy, x, gain, bias, axis=self.axis, eps=self.eps, mean=mean, var=var,
            correction=correction,
        )  # fmt: skip
        return self._store_gradients(grads)

    # -- validation and the running update ------------------------------------------
    def _running(self) -> RunningStats:
        return RunningStats(self.running_mean, self.running_var, self.num_batches_tracked)

    # -- state -------------------------------------------------------------------
    def _check_state(self, state: Mapping[str, Any]) -> None:
        xp = self._xp
        var = state.get("running_var")
        if var is not None and not bool(xp.all(xp.isfinite(var) & (var >= 0))):
            raise ValueError("state_dict['running_var'] must be finite and >= 0 everywhere")
        mean = state.get("running_mean")
        if mean is not None and not bool(xp.all(xp.isfinite(mean))):
            raise ValueError("state_dict['running_mean'] must be finite (no inf or NaN)")
        tracked = state.get("num_batches_tracked")
        if tracked is not None and int(tracked) < 0:
            raise ValueError(f"state_dict['num_batches_tracked'] must be >= 0, got {int(tracked)}")

    def to_torch_state_dict(self) -> dict[str, Any]:
        """Return the state under ``torch.nn.BatchNorm*d``'s key names (``weight``, ...).

        The values are the module's own arrays; for a module that is not
        torch-backed, convert them with ``torch.as_tensor`` before
        ``torch_bn.load_state_dict(...)``.
        """
        return {_TORCH_NAMES.get(k, k): v for k, v in self.state_dict().items()}

    def load_torch_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load a ``torch.nn.BatchNorm*d`` state_dict (``weight``, ``bias``, ``running_*``).

        Tensors are converted to the module's library, device and dtype;
        validation and atomicity as for :meth:`load_state_dict`.
        """
        expected = [_TORCH_NAMES.get(k, k) for k in self.state_dict()]
        check_keys(state, expected, "state_dict", "(torch.nn.BatchNorm*d's names)")
        torch_names = {v: k for k, v in _TORCH_NAMES.items()}
        self.load_state_dict({torch_names.get(k, k): v for k, v in state.items()})

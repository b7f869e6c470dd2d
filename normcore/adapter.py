"""The plugin API: what a backend adapter implements, and the types it receives and returns.

normcore's math never needs an adapter: it is written once against the Array
API standard (the *reference path*). An adapter describes one array library
and adds only what differs for it: how to recognize its arrays, the dtype
statistics accumulate in, the devices it has, and optionally faster kernels
for the one normalization primitive that layer, RMS, batch, group and instance
norm (and weight norm, and every layer norm inside the recurrent cells) are
made of.

A third-party plugin imports only this module::

    from normcore.adapter import Adapter, Gradients, Layout, Normalized

subclasses :class:`Adapter`, and registers an instance under the
``normcore.backends`` entry-point group (see ``docs/plugins.md`` for a complete
example). The built-in NumPy, PyTorch and CuPy adapters use exactly this API.

The primitive
-------------
Given ``x`` and a :class:`Layout`::

    mean, var = statistics of x over layout.reduce_axes   (or layout.stats)
    y = (x - mean) / sqrt(var + eps) * gain + bias          (gain/bias span param_axes)

An adapter's :meth:`Adapter.normalize` and :meth:`Adapter.normalize_backward`
either return the same results as the reference (:func:`reference_normalize`,
:func:`reference_normalize_backward`) or ``NotImplemented``, in which case
the reference runs. ``normcore check`` and normcore's test suite hold every
fast path to the reference.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from .typing import Array, Device, DType, Namespace

if TYPE_CHECKING:
    from types import NotImplementedType

__all__ = [
    "Adapter",
    "Gradients",
    "Layout",
    "Normalized",
    "Statistics",
    "reference_normalize",
    "reference_normalize_backward",
]


class Statistics(NamedTuple):
    """Given statistics (inference), broadcastable to ``x`` (reduced axes of size one).

    ``mean`` is None for RMS norm (``Layout.center`` False); ``var`` is then
    the mean square.
    """

    mean: Array | None
    var: Array


class Normalized(NamedTuple):
    """Result of the forward: ``y`` and the statistics it used.

    ``mean`` and ``var`` (the biased variance, or the variance divided by
    ``count - correction``; the mean square for RMS norm) keep ``x``'s
    dimensions with the reduced axes of size one, in the accumulation dtype.
    ``mean`` is None for RMS norm. A fast path may leave both None unless it
    was called with ``need_stats=True``.
    """

    y: Array
    mean: Array | None
    var: Array | None


class Gradients(NamedTuple):
    """Gradients of a normalization with respect to its input and parameters.

    ``dgain``/``dbias`` are None when the corresponding parameter was None.
    """

    dx: Array
    dgain: Array | None
    dbias: Array | None


@dataclass(frozen=True, eq=False, slots=True)
class Layout:
    """Where the statistics are taken and what the parameters span: one call's geometry.

    Every normalization is the primitive with a layout. For an input of
    ``ndim`` dimensions:

    ============================  ======================  ====================
    method                        ``reduce_axes``         ``param_axes``
    ============================  ======================  ====================
    layer norm, last axis         ``(ndim - 1,)``         ``(ndim - 1,)``
    layer norm over C, H, W       ``(1, 2, 3)``           ``(1, 2, 3)``
    batch norm, NCHW              ``(0, 2, 3)``           ``(1,)``
    batch norm, NHWC              ``(0, 1, 2)``           ``(3,)``
    group norm (x as N, G, C/G,   ``(2, 3, 4)``           ``(1, 2)``
    H, W)
    ============================  ======================  ====================

    Attributes
    ----------
    reduce_axes : tuple of int
        Sorted, non-negative axes the statistics are taken over.
    param_axes : tuple of int
        Axes of ``x`` that ``gain`` and ``bias`` span, in the order of the
        parameters' own dimensions (not necessarily sorted).
    center : bool
        Subtract the mean (True) or not (RMS norm: ``var`` is the mean square).
    eps : float
        Added to the variance inside the square root; > 0.
    stats : Statistics or None
        Fixed statistics (inference); None computes them from ``x``.
    correction : float
        Batch statistics only: the variance divides the sum of squares by
        ``count - correction`` (0: biased; 1: unbiased).
    """

    reduce_axes: tuple[int, ...]
    param_axes: tuple[int, ...]
    center: bool = True
    eps: float = 1e-5
    stats: Statistics | None = None
    correction: float = 0.0

    def is_trailing(self, ndim: int) -> bool:
        """Whether this is the layer-norm layout: statistics and parameters on the last axes."""
        count = len(self.reduce_axes)
        return self.param_axes == self.reduce_axes == tuple(range(ndim - count, ndim))

    def channel_axis(self, ndim: int) -> int | None:
        """The batch-norm layout's channel axis: one parameter axis, statistics over the rest.

        None for any other layout.
        """
        if len(self.param_axes) != 1 or len(self.reduce_axes) != ndim - 1:
            return None
        axis = self.param_axes[0]
        return None if axis in self.reduce_axes else axis

    def count(self, shape: tuple[int, ...]) -> int:
        """The number of values each statistic is taken over, for an input of ``shape``."""
        count = 1
        for axis in self.reduce_axes:
            count *= shape[axis]
        return count


class Adapter:
    """Base class of a normcore backend adapter.

    Subclasses set :attr:`name` and :attr:`library` and override what their
    library needs. Adapter modules must not import their library at import
    time: normcore loads every registered adapter, and a user who has only
    NumPy must never import torch or cupy.

    Attributes
    ----------
    name : str
        Short name shown by ``normcore info`` and accepted by ``--backend``.
    library : str
        Top-level module name of the array library (``"torch"``). An array is
        only offered to :meth:`owns` once this module is in ``sys.modules``,
        so detection never imports anything.
    install_hint : str
        How to install the library, shown when it is missing (default
        ``pip install <library>``).
    """

    name: str = ""
    library: str = ""
    install_hint: str = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__dict__.get("install_hint") and cls.library:
            cls.install_hint = f"pip install {cls.library}"

    # -- what the library is ----------------------------------------------------
    def owns(self, x: Any) -> bool:
        """Return whether ``x`` is an array of this adapter's library.

        Only called when :attr:`library` is already imported, once per array
        type (the answer is cached by type).
        """
        raise NotImplementedError

    def accumulation_dtype(self, xp: Namespace, dtype: DType) -> DType:
        """Return the dtype in which statistics of ``dtype`` data are accumulated.

        The default accumulates floats narrower than 32 bits (float16,
        bfloat16) in float32 and everything else in its own dtype: the rule
        that also applies to arrays no adapter owns.
        """
        return xp.float32 if xp.finfo(dtype).bits < 32 else dtype

    def library_version(self) -> str | None:
        """Return the installed library's version, or None if it is not installed."""
        from importlib import metadata

        try:
            return metadata.version(self.library)
        except metadata.PackageNotFoundError:
            return None

    def namespace(self) -> Namespace:
        """Return the Array API namespace of this library's arrays; may import the library.

        The default is the namespace array-api-compat gives an array made by
        the top-level module :attr:`library` (``numpy``, ``torch``, ``cupy``);
        a library whose top-level module does not create arrays (``jax``:
        ``jax.numpy`` does) overrides it.
        """
        import importlib

        from ._plumbing.compat import resolve_creation

        return resolve_creation(importlib.import_module(self.library))[0]

    def check_dtype(self, xp: Namespace, dtype: DType) -> None:
        """Raise ``TypeError`` if arrays of ``dtype`` cannot be created as the library is set up.

        Called before parameters or state of ``dtype`` are created (a
        :class:`~normcore.Module`, initial RNN weights), so that a library that
        would silently create another dtype (JAX's float64 without
        ``jax_enable_x64``) fails with a message saying how to fix it. The
        default accepts every dtype.
        """

    def resolve_device(self, device: Device) -> Device:
        """Return ``device`` as the user named it in the form ``asarray(..., device=)`` takes.

        For ``like=..., device=...`` of modules and :func:`~normcore.rnn_params`.
        The default returns it unchanged (NumPy and CuPy take their own
        names); JAX turns ``"cpu"``/``"cpu:0"`` into its ``Device``, torch
        into a ``torch.device``. A device the library does not have should
        raise ValueError naming ``device``; whatever it returns is also tried
        by creating an empty array there, whose failure becomes that ValueError.
        """
        return device

    def devices(self) -> list[str]:
        """Return human-readable names of the devices this library can use (``normcore info``)."""
        return []

    def check_devices(self) -> list[Device]:
        """Return the devices ``normcore check`` tests, as ``asarray(..., device=)`` takes them.

        Called only when the library is installed; may import it. The default
        is the library's default device.
        """
        from ._plumbing.compat import device_of

        return [device_of(self.namespace().zeros(1))]

    def is_loaded(self) -> bool:
        """Return whether the adapter's library has been imported by anyone."""
        # A library that failed to import (or was blocked) is None in sys.modules.
        return sys.modules.get(self.library) is not None

    def is_concrete(self, x: Array) -> bool:
        """Return whether ``x``'s values can be read on the host here (``bool()``, ``float()``).

        False for arrays whose values do not exist yet or must not be read:
        lazy arrays (dask), traced ones (inside ``jax.jit``, ``torch.compile``
        or ``torch.func`` transforms) and arrays without values (torch's
        ``meta`` tensors). The reference path branches on values only where
        this is true (its overflow check of the statistics); elsewhere it runs
        branch-free. The default asks ``array_api_compat.is_lazy_array``.
        """
        import array_api_compat

        return not array_api_compat.is_lazy_array(x)

    def overflow_ignored(self) -> AbstractContextManager:
        """Return a context in which floating-point overflow is not reported.

        The reference path computes a batch's statistics as they are first
        and, where a variance overflows, again on scaled values; the first
        try's overflow is expected and must not reach the user as a warning.
        The default is a context that does nothing; NumPy's adapter returns
        ``numpy.errstate(over="ignore", invalid="ignore")`` (thread-local).
        """
        return contextlib.nullcontext()

    def adopt(self, xp: Namespace, x: Array, other: Any) -> Array | None:
        """Return ``other``, an array of another library, as a parameter of this library's ``x``.

        Asked when a parameter or given statistic (``gain``, ``bias``, ``mean``,
        ``var``, ``dy``) passed with ``x`` is not an array of ``x``'s library.
        Return it as an array of ``x``'s library without computing or copying
        anything eagerly (dask wraps a NumPy array as a one-chunk dask array),
        or None to refuse it: the default, so normcore never converts between
        libraries unless an adapter says the conversion is free and lazy.
        The result is then checked (dtype, device) like any other argument.
        """
        return None

    # -- fast paths -------------------------------------------------------------
    def normalize(
        self,
        xp: Namespace,
        x: Array,
        gain: Array | None,
        bias: Array | None,
        layout: Layout,
        *,
        need_stats: bool = False,
    ) -> Normalized | NotImplementedType:
        """Forward of the primitive with a faster kernel, or ``NotImplemented``.

        Receives validated, non-empty arguments: ``x`` a real floating array
        of this library, ``gain``/``bias`` (or None) of the same library and
        device, shaped by ``layout.param_axes``, with ``x``'s dtype (or
        float32 for float16/bfloat16 ``x``). Must return what
        :func:`reference_normalize` returns: ``y`` with ``x``'s shape and
        dtype and, when ``need_stats`` is true, the statistics (see
        :class:`Normalized`). The default returns ``NotImplemented``: the
        reference path runs.
        """
        return NotImplemented

    def normalize_backward(
        self,
        xp: Namespace,
        dy: Array,
        x: Array,
        gain: Array | None,
        bias: Array | None,
        layout: Layout,
    ) -> Gradients | NotImplementedType:
        """Backward of the primitive with a faster kernel, or ``NotImplemented``.

        Receives what :meth:`normalize` receives plus ``dy`` (``x``'s shape
        and dtype); ``bias`` is passed for its presence and dtype only (the
        gradients do not depend on its values). Must return what
        :func:`reference_normalize_backward` returns: ``dx`` like ``x``,
        ``dgain`` like ``gain`` and ``dbias`` like ``bias`` (None where the
        parameter is None). With ``layout.stats`` the statistics are constants;
        otherwise the gradient flows through them. The default returns
        ``NotImplemented``.
        """
        return NotImplemented

    def moments(
        self, xp: Namespace, x: Array, axes: tuple[int, ...]
    ) -> tuple[int, Array, Array] | NotImplementedType:
        """``(count, mean, M2)`` of ``x`` over ``axes`` (dimensions kept), or ``NotImplemented``.

        The statistics of :func:`normcore.moments`, :class:`normcore.Moments`
        and :func:`normcore.population_stats`: ``count`` values per statistic,
        their ``mean`` and sum of squared deviations ``M2``, in ``x``'s dtype
        (``x`` is already in the accumulation dtype). For libraries that
        compute out of core (dask: one tree reduction of per-chunk triples)
        or have a one-pass kernel. Must return what
        :func:`normcore._reference.moments.moment_sums` returns; the default
        returns ``NotImplemented``.
        """
        return NotImplemented

    def settle(self, values: tuple[Array, ...]) -> tuple[Array, ...]:
        """Return state values holding their results, computed together; for lazy libraries.

        Called on the new running statistics of a batch norm (and the flag
        saying whether they are finite) before they replace the old ones. A
        library whose arrays are lazy computes them here, in one computation,
        and returns arrays that hold the results, so that state never keeps a
        graph that grows with every update (nor recomputes earlier updates).
        The default returns ``values`` as they are.
        """
        return values

    def custom_gradient(
        self,
        forward: Callable[..., tuple[Array, Any]],
        backward: Callable[[Array, Any], tuple[Array | None, ...]],
        inputs: tuple[Array | None, ...],
    ) -> tuple[Array, Any] | NotImplementedType:
        """Run ``forward(*inputs) -> (y, saved)`` so that autodiff takes ``backward`` for ``y``.

        ``backward(dy, saved)`` returns one gradient per input (None for a
        None input). For computations whose gradient autodiff cannot find by
        itself, such as batch statistics gathered from other processes
        (:mod:`normcore.sync`). Return ``(y, saved)``, or ``NotImplemented``
        (the default) to have ``forward`` run as it is: right for libraries
        without autodiff, and for those that differentiate through
        ``forward`` correctly (JAX differentiates its collectives).
        """
        return NotImplemented

    def recurrent(
        self,
        xp: Namespace,
        xs: Array,
        states0: list,
        layer_params: list,
        *,
        cell: str,
        nonlinearity: str,
        bidirectional: bool,
        batch_first: bool,
        dropout: float,
    ) -> tuple[Array, list] | NotImplementedType:
        """A stack of plain (not layer-normalized) recurrent layers with a native kernel.

        Called by :func:`normcore._functional.rnn.stacked_rnn` for cells without
        layer norm and without a mask, with validated arguments in its layout:
        ``layer_params[k]`` and ``states0[k]`` (a state, None for zeros, or for
        the LSTM ``(h, c)`` with either part None) belong to layer ``k // D``,
        direction ``k % D``; ``dropout`` is the probability of dropout on every
        layer's output but the last (0 outside training). Return ``(hs,
        finals)`` as ``stacked_rnn`` does, differentiable by the library's
        autodiff, or ``NotImplemented`` (the default) to run normcore's loop.
        """
        return NotImplemented

    def cell_step(
        self, xp: Namespace, cell: str, ctx: Any, u: Array, ah: Array, state: tuple, save: bool
    ) -> tuple | NotImplementedType:
        """One step of a recurrent cell's forward with a fused kernel, or ``NotImplemented``.

        The arguments are those of the reference cell's ``step`` (see
        :mod:`normcore._reference.cells`) after ``cell``, its name, and
        ``ctx``, the call's ``Context``: the step's input term ``u``, ``ah =
        h_prev @ W_h``, the previous state and whether to save what the
        backward needs. Must return what that ``step`` returns, ``(new_state,
        saved)``, with ``saved`` structured exactly as the reference cell
        saves it (its ``step_backward``, or this adapter's
        :meth:`cell_step_backward`, consumes it). The default returns
        ``NotImplemented``.
        """
        return NotImplemented

    def cell_step_backward(
        self, xp: Namespace, cell: str, ctx: Any, saved: tuple, dnew: tuple
    ) -> tuple | NotImplementedType:
        """The backward of one step of a recurrent cell with a fused kernel, or ``NotImplemented``.

        ``cell`` is ``"rnn"``, ``"lstm"`` or ``"gru"``; ``ctx`` the call's
        :class:`normcore._reference.cells.Context` (parameters, ``layer_norm``,
        ``eps``, ``hidden``), ``saved`` what the reference cell's ``step``
        saved and ``dnew`` the gradient of the step's new state, all validated
        arrays of this library. Must return what the reference cell's
        ``step_backward`` returns: ``(du, dah, dstate_direct, grads)``. For
        libraries where one kernel per step beats the reference's dozen
        elementwise calls and layer-norm backwards; the default returns
        ``NotImplemented``.
        """
        return NotImplemented

    def map_batches(
        self,
        function: Callable[..., Any],
        args: tuple,
        in_axes: tuple,
        out_axes: Any,
    ) -> Any:
        """``function(*args)`` computed part by part along a batch axis, or ``NotImplemented``.

        For libraries whose arrays are made of parts (dask's chunks), so that a
        computation whose batch elements are independent (a recurrent layer
        over a batch of sequences) runs as one task per part on the parts'
        own library, instead of as one lazy graph of every step. ``in_axes``
        gives each argument's batch axis (None: the argument is shared whole
        by every part) and ``out_axes`` each result's, with None for a result
        that is a sum over the batch (a parameter's gradient); as with
        ``jax.vmap``, one entry may stand for a whole nested argument or
        result (:mod:`normcore._plumbing.trees`). The first batched argument
        decides how the batch is cut (its chunks); arguments are validated
        already, and ``function`` is picklable. The default returns
        ``NotImplemented``: ``function`` runs on the whole arrays.
        """
        return NotImplemented

    def __repr__(self) -> str:
        return f"<normcore adapter {self.name!r} for {self.library!r}>"


# The reference path: the contract's own implementation, written against the Array API
# (normcore/_reference/primitive.py). Imported last because it uses the types above.
from ._reference.primitive import normalize as reference_normalize  # noqa: E402
from ._reference.primitive import normalize_backward as reference_normalize_backward  # noqa: E402

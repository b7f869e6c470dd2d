"""Adapter for dask arrays: chunk-parallel fast paths and one-pass tree-reduced moments.

Each dask block is an array of another library (NumPy, or CuPy for dask on a
GPU), and normcore already has fast kernels for those. This adapter builds the
dask graph; every block is computed by the block library's own adapter
through normcore's dispatch (its fast kernel, or the reference where that
declines).

* **Statistics inside one chunk** (layer, RMS, group and instance norm on
  batch-chunked data: every reduced axis has a single chunk): one task per
  block, forward and backward. The backward's ``dgain``/``dbias`` are
  per-block partial sums, added up by a dask reduction afterwards.
* **Batch statistics across chunks** (batch norm over a chunked batch axis,
  :func:`normcore.moments`, :class:`normcore.Moments`,
  :func:`normcore.population_stats`): one tree reduction
  (``dask.array.reduction``) of per-chunk ``(count, mean, M2)``, each chunk's
  computed by two passes over that chunk alone and merged by the one Chan
  merge of :mod:`normcore._reference.moments`. One pass over the data; no
  chunk is held until a global mean is known. The forward then normalizes each
  block with those (small) statistics as given statistics: two passes over
  the data in all, the least a normalization by statistics of the whole array
  can do.
* **Given statistics**: one task per block whatever the chunking.
* Anything else (RMS norm or the backward with statistics across chunks)
  returns ``NotImplemented``: the reference path runs, as a lazy dask graph
  over the same chunks (correct, about 6-8 passes). It never rechunks: moving
  a reduced axis into one chunk costs a full shuffle of the data, which the
  user can choose with ``x.rechunk({axis: -1})``, after which the first case
  applies.

Parameters and given statistics may be arrays of the blocks' own library (a
NumPy ``gain`` with a NumPy-backed dask ``x``): :meth:`DaskAdapter.adopt`
wraps them as one-chunk dask arrays (nothing is computed). dask is imported
only once the user has imported it.
"""

from __future__ import annotations

import functools
import math
import sys
from dataclasses import replace
from typing import Any

from normcore.adapter import Adapter, Gradients, Normalized, Statistics

__all__ = ["DaskAdapter", "adapter"]


def _da() -> Any:
    # Only reached for dask arrays, so dask.array is already imported.
    return sys.modules["dask.array"]


def _in_one_chunk(x: Any, axes: tuple[int, ...]) -> bool:
    return all(x.numblocks[a] == 1 for a in axes)


def _broadcast(a: Any, axes: tuple[int, ...], ndim: int) -> Any:
    """A dask array whose dimensions follow ``axes`` reshaped to broadcast against ``x``."""
    if a is None:
        return None
    ordered = sorted(axes)
    a = a.transpose(tuple(axes.index(axis) for axis in ordered))
    shape = [1] * ndim
    for dim, axis in enumerate(ordered):
        shape[axis] = a.shape[dim]
    return a.reshape(tuple(shape))


def _aligned(a: Any, x: Any) -> Any:
    """``a`` (broadcastable to ``x``) chunked like ``x`` along its axes of full size.

    ``map_blocks`` hands an array with one chunk along an axis whole to every
    block (broadcasting), so parameters must be cut like ``x`` explicitly.
    """
    if a is None:
        return None
    chunks = {axis: x.chunks[axis] for axis in range(x.ndim) if a.shape[axis] != 1}
    return a.rechunk(chunks) if any(a.chunks[i] != c for i, c in chunks.items()) else a


def _unbroadcast(xp: Any, block: Any, axes: tuple[int, ...]) -> Any:
    """The inverse of :func:`_broadcast` for one block: dimensions back in ``axes`` order."""
    if block is None:
        return None
    ordered = sorted(axes)
    block = xp.reshape(block, tuple(block.shape[a] for a in ordered))
    perm = tuple(ordered.index(axis) for axis in axes)
    block = block if perm == tuple(range(len(perm))) else xp.permute_dims(block, perm)
    # A fresh copy (parameters are small): blocks of dask.array.ones and of broadcasts are
    # strided views, which the NumPy kernels decline, so the same values would take
    # another code path depending on how the parameter was made.
    return xp.asarray(block, copy=True)


def _with_ndim(a: Any, ndim: int) -> Any:
    """Given statistics (broadcastable to ``x``) with ``x``'s number of dimensions."""
    if a is None or a.ndim == ndim:
        return a
    return a.reshape((1,) * (ndim - a.ndim) + tuple(a.shape))


def _meta(x: Any, dtype: Any) -> Any:
    return x._meta.astype(dtype)


# -- what runs on each block (module level: the distributed scheduler pickles them) ---------
def _block_layout(layout, mean, var):
    if var is None:
        return layout
    return replace(layout, stats=Statistics(mean, var), correction=0.0)


def _normalize_block(x, gain, bias, mean, var, scale=None, *, layout, need_stats):
    """One block's normalization, with the given statistics when ``var`` is given.

    ``scale`` (given with ``mean`` and ``var``): the statistics' powers of two
    from :func:`~normcore._reference.moments.scaled_moment_sums`; ``var`` is
    then the variance of ``x / scale``. Where every scale is one (the block's
    values are read here: a block is concrete) the block library's kernels
    run; otherwise the reference normalizes ``x / scale`` with
    ``eps / scale**2``, which gives the same result without forming a
    variance beyond the dtype's range.
    """
    from normcore._plumbing import dispatch
    from normcore._plumbing.compat import namespace_of
    from normcore._plumbing.registry import adapter_for
    from normcore._reference import primitive

    xp, adapter = namespace_of(x), adapter_for(x)
    gain = _unbroadcast(xp, gain, layout.param_axes)
    bias = _unbroadcast(xp, bias, layout.param_axes)
    if scale is not None and not bool(xp.all(scale == 1)):
        tiny = xp.finfo(var.dtype).smallest_normal
        eps = xp.maximum(layout.eps / scale / scale, xp.asarray(tiny, dtype=var.dtype))
        scaled = replace(layout, stats=Statistics(mean / scale, var + eps), eps=0.0, correction=0.0)
        y = primitive.normalize(adapter, xp, x / scale, gain, bias, scaled).y
        return primitive.as_dtype(xp, y, x.dtype)
    block = _block_layout(layout, mean, var)
    result = dispatch.normalize(adapter, xp, x, gain, bias, block, need_stats=need_stats)
    return tuple(result) if need_stats else result.y


def _backward_block(dy, x, gain, bias, mean, var, *, layout):
    from normcore._plumbing import dispatch
    from normcore._plumbing.compat import namespace_of
    from normcore._plumbing.registry import adapter_for

    xp = namespace_of(x)
    axes = layout.param_axes
    gain, bias = _unbroadcast(xp, gain, axes), _unbroadcast(xp, bias, axes)
    block = _block_layout(layout, mean, var)
    return tuple(dispatch.normalize_backward(adapter_for(x), xp, dy, x, gain, bias, block))


def _pick(parts, index):
    return parts[index]


def _pick_partial(parts, index, *, axes, ndim):
    """A per-block parameter gradient, shaped to broadcast against its block."""
    from normcore._plumbing.compat import namespace_of

    partial = parts[index]
    xp = namespace_of(partial)
    ordered = sorted(axes)
    perm = tuple(axes.index(axis) for axis in ordered)
    if perm != tuple(range(len(perm))):
        partial = xp.permute_dims(partial, perm)
    shape = [1] * ndim
    for dim, axis in enumerate(ordered):
        shape[axis] = partial.shape[dim]
    return xp.reshape(partial, tuple(shape))


def _chunk_moments(x, axis, keepdims=True, computing_meta=False, *, count, **kwargs):
    """``(count, mean, M2, scale)`` of one chunk (``scaled_moment_sums``): this chunk only.

    ``count`` is the number of values of the whole reduction, which the
    chunk's scale must keep from overflowing once the chunks are merged.
    """
    from normcore._plumbing.compat import namespace_of
    from normcore._reference.moments import scaled_moment_sums

    if computing_meta:
        return x
    return scaled_moment_sums(namespace_of(x), x, tuple(axis), count)


def _flatten(parts):
    if isinstance(parts, list):
        return [triple for part in parts for triple in _flatten(part)]
    return [parts]


def _merge_moments(parts, axis=None, keepdims=True, computing_meta=False, **kwargs):
    """Merge chunks' scaled triples pairwise (a balanced tree) with Chan's update."""
    from normcore._reference.moments import merge_scaled

    if computing_meta:
        return parts
    triples = [t for t in _flatten(parts) if t[0] != 0]  # an empty chunk adds nothing
    if not triples:
        return _flatten(parts)[0]
    while len(triples) > 1:
        merged = [merge_scaled(a, b) for a, b in zip(triples[::2], triples[1::2], strict=False)]
        triples = merged + ([triples[-1]] if len(triples) % 2 else [])
    return triples[0]


def _parts_along(x: Any, axis: int | None, sizes: tuple[int, ...]) -> list:
    """``x`` cut into ``len(sizes)`` parts along ``axis`` (each whole along its other axes).

    As delayed objects, one per part; an argument shared by every part
    (``axis`` None) is one object, whole, given to each; None stays None.
    """
    if x is None:
        return [None] * len(sizes)
    da = _da()
    if not isinstance(x, da.Array):
        x = da.from_array(x, chunks=-1)
    if axis is None:
        (whole,) = x.rechunk(-1).to_delayed().ravel()
        return [whole] * len(sizes)
    chunks = tuple(sizes if a == axis else -1 for a in range(x.ndim))
    return list(x.rechunk(chunks).to_delayed().ravel())


def _empty_part(x: Any, axis: int | None) -> Any:
    """A part of ``x`` with no batch elements, in the blocks' library (for dask-style meta)."""
    if x is None:
        return None
    from normcore._plumbing.compat import namespace_of

    meta = x._meta if isinstance(x, _da().Array) else x
    shape = tuple(0 if a == axis else n for a, n in enumerate(x.shape))
    return namespace_of(meta).zeros(shape, dtype=x.dtype)


def _apply_to_part(function, tree, *leaves):
    """``function`` of one part's arguments (rebuilt from ``tree``), its results as a flat tuple."""
    from normcore._plumbing import trees

    return tuple(trees.flatten(function(*trees.unflatten(tree, list(leaves))))[0])


def _batch_total(parts: list, dtype: Any) -> Any:
    """The sum of the parts' results, by a tree reduction in at least float32.

    Each part's own sum over its batch elements is already in ``dtype``.
    """
    if len(parts) == 1:
        return parts[0]
    import numpy as np

    stacked = _da().stack(parts)
    return stacked.sum(axis=0, dtype=np.promote_types(dtype, np.float32)).astype(dtype)


def _unknown_sizes_message(x: Any, axes: tuple[int, ...]) -> str:
    return (
        f"the statistics of a dask array need the sizes of its chunks along axes {axes}, "
        f"which are unknown (shape {tuple(x.shape)}, e.g. after boolean indexing); call "
        "x.compute_chunk_sizes() first, or pass lengths= to x.to_dask_array()"
    )


class DaskAdapter(Adapter):
    """dask.array: graphs whose blocks run the block library's kernels; tree-reduced moments."""

    name = "dask"
    # The array module: a dask array exists only once it is imported (and ``normcore check``
    # creates its arrays from it); the distribution is "dask" (library_version).
    library = "dask.array"
    install_hint = "pip install 'normcore[dask]'"

    def owns(self, x: Any) -> bool:
        return isinstance(x, _da().Array)

    def library_version(self) -> str | None:
        from importlib import metadata

        try:
            return metadata.version("dask")
        except metadata.PackageNotFoundError:
            return None

    def devices(self) -> list[str]:
        return ["cpu"]

    def adopt(self, xp: Any, x: Any, other: Any) -> Any:
        """An array of the blocks' library (NumPy for NumPy-backed ``x``) as a one-chunk array."""
        if type(other) is not type(x._meta):
            return None
        return _da().from_array(other, chunks=tuple(other.shape) or -1)

    # -- the primitive ----------------------------------------------------------
    def normalize(self, xp, x, gain, bias, layout, *, need_stats=False):
        if layout.stats is not None:
            mean, var = (_with_ndim(s, x.ndim) for s in layout.stats)
            return self._blockwise(xp, x, gain, bias, mean, var, layout, need_stats)
        if _in_one_chunk(x, layout.reduce_axes):
            return self._blockwise(xp, x, gain, bias, None, None, layout, need_stats)
        if not layout.center:
            return NotImplemented
        acc = self.accumulation_dtype(xp, x.dtype)
        count, mean, m2, scale = self._scaled_moments(
            xp, x if x.dtype == acc else x.astype(acc), layout.reduce_axes
        )
        var = m2 / (count - layout.correction)  # the variance of x / scale
        mean = mean * scale
        y = self._blockwise(xp, x, gain, bias, mean, var, layout, False, scale).y
        return Normalized(y, mean, var * scale * scale)

    def _blockwise(self, xp, x, gain, bias, mean, var, layout, need_stats, scale=None):
        da = _da()
        axes = layout.param_axes
        args = (
            x,
            *(_aligned(_broadcast(p, axes, x.ndim), x) for p in (gain, bias)),
            *(_aligned(s, x) for s in (mean, var)),
            *(() if scale is None else (_aligned(scale, x),)),
        )
        layout = replace(layout, stats=None)
        if not need_stats:
            y = da.map_blocks(
                _normalize_block, *args, layout=layout, need_stats=False, dtype=x.dtype,
                meta=x._meta,
            )  # fmt: skip
            return Normalized(y, None, None)
        parts = da.map_blocks(
            _normalize_block, *args, layout=layout, need_stats=True, dtype=x.dtype, meta=x._meta
        )
        y = parts.map_blocks(_pick, 0, dtype=x.dtype, meta=x._meta)
        if var is not None:  # given statistics: they are what was used
            return Normalized(y, mean, var)
        acc = self.accumulation_dtype(xp, x.dtype)
        chunks = tuple((1,) if a in layout.reduce_axes else c for a, c in enumerate(parts.chunks))
        stats = [
            None
            if not layout.center and index == 1
            else parts.map_blocks(_pick, index, chunks=chunks, dtype=acc, meta=_meta(x, acc))
            for index in (1, 2)
        ]
        return Normalized(y, *stats)

    def normalize_backward(self, xp, dy, x, gain, bias, layout):
        if layout.stats is None and not _in_one_chunk(x, layout.reduce_axes):
            return NotImplemented
        da = _da()
        axes, ndim = layout.param_axes, x.ndim
        mean = var = None
        if layout.stats is not None:
            mean, var = (_with_ndim(s, ndim) for s in layout.stats)
        params = (_aligned(_broadcast(p, axes, ndim), x) for p in (gain, bias))
        given = (_aligned(s, x) for s in (mean, var))
        parts = da.map_blocks(
            _backward_block, dy.rechunk(x.chunks), x, *params, *given,
            layout=replace(layout, stats=None), dtype=x.dtype, meta=x._meta,
        )  # fmt: skip
        dx = parts.map_blocks(_pick, 0, dtype=x.dtype, meta=x._meta)
        others = tuple(a for a in range(ndim) if a not in axes)
        chunks = tuple(c if a in axes else (1,) * len(c) for a, c in enumerate(parts.chunks))
        ordered = sorted(axes)
        order = tuple(ordered.index(axis) for axis in axes)

        def total(index, param):
            if param is None:
                return None
            partial = parts.map_blocks(
                _pick_partial, index, axes=axes, ndim=ndim, chunks=chunks, dtype=param.dtype,
                meta=_meta(x, param.dtype),
            )  # fmt: skip
            summed = partial.sum(axis=others, dtype=param.dtype) if others else partial
            summed = summed.reshape(tuple(x.shape[a] for a in ordered))
            return summed if order == tuple(range(len(order))) else summed.transpose(order)

        return Gradients(dx, total(1, gain), total(2, bias))

    # -- computations independent along a batch ------------------------------------
    def map_batches(self, function, args, in_axes, out_axes):
        """One task per chunk of the batch axis, each running ``function`` on its part.

        The batch is cut as the first batched (dask) argument is chunked along
        its batch axis; every batched argument is rechunked to those parts and to one
        chunk along its other axes (a recurrent layer's sequence: all its
        steps in one block, so one part of the batch must fit in a worker's
        memory), and shared ones to one chunk. Each task computes its part
        with the blocks' library (NumPy's kernels for NumPy-backed arrays).
        The results' shapes and dtypes come from ``function`` applied to a
        part with no batch elements, as dask's ``map_blocks`` infers ``meta``.
        Results with a batch axis are the parts concatenated; results
        without one are summed over the parts.
        """
        import dask

        from normcore._plumbing import trees

        leaves, tree = trees.flatten(args)
        axes = trees.leaf_specs(in_axes, args)
        batched = [(x, a) for x, a in zip(leaves, axes, strict=True)
                   if a is not None and isinstance(x, _da().Array)]  # fmt: skip
        if not batched:
            return NotImplemented
        first, axis = batched[0]
        sizes = first.chunks[axis]
        if any(math.isnan(size) for size in sizes):
            raise ValueError(_unknown_sizes_message(first, (axis,)))
        columns = [_parts_along(x, a, sizes) for x, a in zip(leaves, axes, strict=True)]
        empty = [_empty_part(x, a) for x, a in zip(leaves, axes, strict=True)]
        metas, out_tree = trees.flatten(function(*trees.unflatten(tree, empty)))
        out_specs = trees.leaf_specs(out_axes, trees.unflatten(out_tree, metas))
        task = dask.delayed(_apply_to_part, pure=True, nout=len(metas))
        results = [task(function, tree, *(column[k] for column in columns))
                   for k in range(len(sizes))]  # fmt: skip
        outputs = []
        for i, (meta, out_axis) in enumerate(zip(metas, out_specs, strict=True)):
            if meta is None:  # a None result (of every part alike)
                outputs.append(None)
                continue
            shapes = [tuple(size if a == out_axis else n for a, n in enumerate(meta.shape))
                      for size in sizes]  # fmt: skip
            parts = [
                _da().from_delayed(result[i], shape=shape, dtype=meta.dtype, meta=meta)
                for result, shape in zip(results, shapes, strict=True)
            ]
            total = out_axis is None
            outputs.append(
                _batch_total(parts, meta.dtype) if total else _da().concatenate(parts, out_axis)
            )
        return trees.unflatten(out_tree, outputs)

    # -- statistics -------------------------------------------------------------
    def settle(self, values):
        """Compute the values together (one ``dask.compute``) and wrap each as one chunk.

        The running statistics of a ``BatchNorm`` on dask arrays are then
        computed once per training step, and each new value is a one-task
        array: the state's graph stays the same size however many steps run.
        """
        import dask

        da = _da()
        return tuple(da.from_array(v, chunks=v.shape) for v in dask.compute(*values))

    def moments(self, xp, x, axes):
        """``(count, mean, M2)`` over ``axes`` as one tree reduction of per-chunk triples.

        ``M2`` is infinite only where it is beyond the dtype's range (the
        chunks' triples are merged in scaled form: see :meth:`_scaled_moments`).
        """
        count, mean, m2, scale = self._scaled_moments(xp, x, axes)
        return count, mean * scale, m2 * scale * scale

    def _scaled_moments(self, xp, x, axes):
        """``(count, mean, M2, scale)`` as ``scaled_moment_sums`` returns, in one tree reduction.

        Each chunk's triple is taken on its values over a power of two that
        keeps the whole reduction's sums of squares in range, and the merges
        bring both sides to the larger scale: one pass, finite for finite data.
        """
        shape = tuple(x.shape)
        if any(not isinstance(shape[a], int) for a in axes):
            raise ValueError(_unknown_sizes_message(x, axes))
        count = math.prod(shape[a] for a in axes)
        reduced = _da().reduction(
            x, functools.partial(_chunk_moments, count=count), _merge_moments,
            combine=_merge_moments, axis=axes, keepdims=True, dtype=x.dtype, concatenate=False,
            meta=x._meta, name="normcore-moments",
        )  # fmt: skip
        mean, m2, scale = (
            reduced.map_blocks(_pick, i, dtype=x.dtype, meta=x._meta) for i in (1, 2, 3)
        )
        return count, mean, m2, scale


adapter = DaskAdapter()

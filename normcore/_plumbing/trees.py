"""Nested arguments and results as flat lists of leaves, and back.

The calls that :meth:`normcore.adapter.Adapter.map_batches` maps take and
return nested structures: a recurrent state is an array, ``(h, c)`` or None;
:class:`~normcore.RNNGradients` holds a dict of parameter gradients. These
helpers take such a structure apart into its leaves (arrays, None, anything
that is not a tuple, list or dict) and put it back together, the way
``jax.tree_util`` does for pytrees. A structure (``Tree``) is plain data of
importable types, so it pickles (dask.distributed sends it to its workers).
"""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = ["Tree", "flatten", "leaf_specs", "unflatten"]


class Tree(NamedTuple):
    """The shape of a nested structure: its container type, keys and children (None: a leaf)."""

    kind: type | None
    keys: tuple = ()
    children: tuple = ()


_LEAF = Tree(None)


def _children(node: Any) -> tuple[type, tuple, tuple] | None:
    if isinstance(node, dict):
        return dict, tuple(node), tuple(node.values())
    if isinstance(node, (tuple, list)):
        return type(node), (), tuple(node)
    return None


def flatten(node: Any) -> tuple[list, Tree]:
    """``(leaves, tree)``: the leaves of ``node`` in order and the structure around them."""
    parts = _children(node)
    if parts is None:
        return [node], _LEAF
    kind, keys, children = parts
    leaves: list = []
    trees = []
    for child in children:
        child_leaves, child_tree = flatten(child)
        leaves.extend(child_leaves)
        trees.append(child_tree)
    return leaves, Tree(kind, keys, tuple(trees))


def _count(tree: Tree) -> int:
    return 1 if tree.kind is None else sum(_count(child) for child in tree.children)


def unflatten(tree: Tree, leaves: list) -> Any:
    """The structure ``tree`` with ``leaves`` in place of its leaves (:func:`flatten` undone)."""
    if tree.kind is None:
        (leaf,) = leaves
        return leaf
    children, start = [], 0
    for child in tree.children:
        stop = start + _count(child)
        children.append(unflatten(child, leaves[start:stop]))
        start = stop
    if tree.kind is dict:
        return dict(zip(tree.keys, children, strict=True))
    if hasattr(tree.kind, "_fields"):  # a NamedTuple
        return tree.kind(*children)
    return tree.kind(children)


def leaf_specs(prefix: Any, node: Any) -> list:
    """One entry of ``prefix`` per leaf of ``node``; a leaf of ``prefix`` covers a whole subtree.

    As ``jax.vmap``'s ``in_axes``: ``leaf_specs((1, 0, None), (xs, (h, c), params))``
    is ``[1, 0, 0, None, ...]`` with one None per entry of ``params``.
    """
    spec_parts = _children(prefix)
    if spec_parts is None:
        return [prefix] * len(flatten(node)[0])
    node_parts = _children(node)
    if node_parts is None or len(node_parts[2]) != len(spec_parts[2]):
        raise ValueError(f"the specification {prefix!r} does not match the structure {node!r}")
    return [
        spec
        for sub, child in zip(spec_parts[2], node_parts[2], strict=True)
        for spec in leaf_specs(sub, child)
    ]

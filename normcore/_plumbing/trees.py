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
    is ``[1, 0, 0, None, ...]`` with one None per entry of ``params``. A
    container of ``prefix`` must be one of ``node``'s kind (a dict with the
    same keys, matched by key; a tuple or list of the same length).
    """
    spec_parts = _children(prefix)
    if spec_parts is None:
        return [prefix] * len(flatten(node)[0])
    node_parts = _children(node)
    if node_parts is None or not _same_kind(spec_parts, node_parts):
        raise ValueError(
            f"the specification {_outline(prefix)} does not match the structure {_outline(node)}"
        )
    if spec_parts[0] is dict:
        pairs = [(prefix[key], node[key]) for key in node]
    else:
        pairs = list(zip(spec_parts[2], node_parts[2], strict=True))
    return [spec for sub, child in pairs for spec in leaf_specs(sub, child)]


def _same_kind(spec: tuple, node: tuple) -> bool:
    (spec_kind, spec_keys, spec_children), (kind, keys, children) = spec, node
    if (spec_kind is dict) != (kind is dict):
        return False
    if kind is dict:
        return set(spec_keys) == set(keys)
    return len(spec_children) == len(children)


def _outline(node: Any) -> str:
    """``node``'s structure with its leaves as their type names (no array values)."""
    parts = _children(node)
    if parts is None:
        return "None" if node is None else type(node).__name__
    kind, keys, children = parts
    if kind is dict:
        items = zip(keys, children, strict=True)
        return "{" + ", ".join(f"{k!r}: {_outline(c)}" for k, c in items) + "}"
    inner = ", ".join(_outline(c) for c in children)
    return f"[{inner}]" if kind is list else f"({inner}{',' if len(children) == 1 else ''})"

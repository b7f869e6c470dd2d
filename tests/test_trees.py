"""normcore._plumbing.trees: nested arguments as flat leaves (for Adapter.map_batches)."""

from __future__ import annotations

import pytest

import normcore
from normcore._plumbing.trees import flatten, leaf_specs, unflatten


def test_flatten_and_unflatten_round_trip_every_container():
    grads = normcore.RNNGradients("dxs", ("dh", None), {"W_x": 1, "b": [2, 3]})
    node = (grads, ["a", ("b",)], {"k": None}, "leaf")
    leaves, tree = flatten(node)
    assert leaves == ["dxs", "dh", None, 1, 2, 3, "a", "b", None, "leaf"]
    back = unflatten(tree, leaves)
    assert back == node
    assert type(back[0]) is normcore.RNNGradients and type(back[1]) is list


def test_a_leaf_of_the_specification_covers_its_subtree():
    node = ("xs", ("h", "c"), {"W_x": 0, "W_h": 0}, None)
    assert leaf_specs((1, 0, None, 1), node) == [1, 0, 0, None, None, 1]
    assert leaf_specs(0, node) == [0] * 6


def test_dicts_are_matched_by_key():
    assert leaf_specs({"a": "A", "b": "B"}, {"b": 1, "a": 2}) == ["B", "A"]


@pytest.mark.parametrize(
    ("prefix", "node"),
    [({"a": 0}, {"b": 1}), ([0], {"x": 1}), ((0, 1), (1, 2, 3)), ((0,), 1)],
    ids=["other-keys", "list-for-dict", "other-length", "container-for-leaf"],
)
def test_a_specification_of_another_structure_is_refused(prefix, node):
    with pytest.raises(ValueError, match=r"does not match the structure"):
        leaf_specs(prefix, node)

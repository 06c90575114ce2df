"""Chain metrics on hand-made trees and against brute force (streams/chains.py)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams import chains

T = 1_767_225_600_000


def build(parent_of: list[int]) -> dict:
    """Node i+1's parent is parent_of[i] (node 0 is the root)."""
    chain = chains.new_chain("n0", T)
    for i, p in enumerate(parent_of, start=1):
        assert chains.add_node(chain, f"n{i}", f"n{p}", T + i)
    return chain


@pytest.mark.parametrize("n", [2, 3, 5, 10, 51])
def test_star_of_n(n: int) -> None:
    chain = build([0] * (n - 1))
    assert math.isclose(chains.structural_virality(chain), 2 * (n - 1) / n)
    assert chains.depth(chain) == 1 and chains.k_by_generation(chain) == [n - 1, 0]


@pytest.mark.parametrize("n", [2, 3, 4, 10, 40])
def test_path_of_n(n: int) -> None:
    chain = build(list(range(n - 1)))
    assert math.isclose(chains.structural_virality(chain), (n + 1) / 3)
    assert chains.depth(chain) == n - 1


def test_balanced_binary_tree_of_depth_2() -> None:
    # 7 nodes: distances sum to 48 over 21 pairs
    chain = build([0, 0, 1, 1, 2, 2])
    assert math.isclose(chains.structural_virality(chain), 48 / 21)
    assert chains.k_by_generation(chain) == [2, 2, 0]
    assert chains.summary(chain)["nodes_by_generation"] == [1, 2, 4]


def test_k_per_generation_on_a_known_tree() -> None:
    # gen1: n1 n2 n3; gen2: n4 (of n1), n5 n6 (of n2); gen3: n7 (of n5)
    chain = build([0, 0, 0, 1, 2, 2, 5])
    assert chains.k_by_generation(chain) == [3, 1, 1 / 3, 0]
    assert chains.time_to_next_generation(chain) == [1, 3, 3]  # first node times: T, T+1, T+4, T+7


def test_a_node_is_added_once_and_needs_a_known_parent() -> None:
    chain = build([0])
    assert not chains.add_node(chain, "n1", "n0", T)
    with pytest.raises(KeyError):
        chains.add_node(chain, "x", "nobody", T)


def test_viral_by_k_needs_depth_3_and_two_generations_at_k_1() -> None:
    # root with 2 buyers, each refers 1, each of those refers 1: K_1 = 1, K_2 = 1, depth 3
    chain = build([0, 0, 1, 2, 3, 4])
    assert chains.k_by_generation(chain)[1:3] == [1, 1]
    assert chains.is_viral(chain)
    shallow = build([0, 0, 1, 2])  # depth 2 only
    assert not chains.is_viral(shallow)
    dying = build([0, 0, 0, 0, 1, 5])  # K_1 = 0.5, K_2 = 1
    assert not chains.is_viral(dying)


def test_viral_by_structural_virality_needs_50_nodes() -> None:
    long_path = build(list(range(49)))  # 50 nodes, virality 17
    assert chains.is_viral(long_path)
    short_path = build(list(range(10)))  # K = 1 every generation: viral by K
    assert chains.is_viral(short_path)
    broom = build([0] * 45 + [1, 46, 46, 46])  # 50 nodes, depth 3, virality below 4, never K >= 1 twice
    assert chains.structural_virality(broom) < 4 and not chains.is_viral(broom)


def test_crossing_into_viral_is_reported_once() -> None:
    chain = build([0, 0, 1, 2, 3])
    assert not chains.update_viral(chain)
    chains.add_node(chain, "n6", "n4", T + 100)
    assert chains.update_viral(chain)
    chains.add_node(chain, "n7", "n6", T + 200)
    assert not chains.update_viral(chain)
    assert chain["crossings"] == 1


def test_growth_counts_the_last_hour_and_day() -> None:
    chain = chains.new_chain("r", T)
    chains.add_node(chain, "a", "r", T + 10)
    chains.add_node(chain, "b", "r", T + 10 * chains.HOUR_MS)
    chains.add_node(chain, "c", "r", T + 30 * chains.HOUR_MS)
    assert chains.growth(chain, T + 30 * chains.HOUR_MS) == (1, 2)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10_000), min_size=1, max_size=120))
def test_incremental_virality_equals_brute_force(choices: list[int]) -> None:
    parent_of = [c % (i + 1) for i, c in enumerate(choices)]  # a random recursive tree
    chain = build(parent_of)
    brute = chains.brute_force_virality(chain["parent"], "n0")
    assert math.isclose(chains.structural_virality(chain), brute, rel_tol=1e-12)
    depths = [chain["gen"][f"n{i}"] for i in range(len(parent_of) + 1)]
    assert chain["d"] == sum(depths)
    for node, p in chain["parent"].items():
        assert chain["gen"][node] == chain["gen"][p] + 1  # generation = parent's + 1


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10_000), min_size=2, max_size=80), st.data())
def test_removing_a_leaf_undoes_adding_it(choices: list[int], data: st.DataObject) -> None:
    parent_of = [c % (i + 1) for i, c in enumerate(choices)]
    chain = build(parent_of)
    leaves = [n for n, size in chain["size"].items() if size == 1 and n != "n0"]
    leaf = data.draw(st.sampled_from(leaves))
    assert chains.remove_leaf(chain, leaf)
    rest = {n: p for n, p in chain["parent"].items()}
    assert math.isclose(chains.structural_virality(chain), chains.brute_force_virality(rest, "n0"), rel_tol=1e-12)
    assert chain["n"] == len(parent_of) and sum(chain["per_gen"]) == chain["n"]
    assert not chains.remove_leaf(chain, "n0")

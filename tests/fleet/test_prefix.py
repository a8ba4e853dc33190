"""The prefix-routing decision (``fleet.prefix``): pure, no Ray."""

from __future__ import annotations

import pytest

from fleet.prefix import PrefixIndex, offer, prefix_blocks, rank

SYSTEM = list(range(1000, 1100))  # a 100-token system prompt: 3 whole blocks of 32


def prompt(question: int, system: list[int] = SYSTEM) -> list[int]:
    return system + [question] * 20


def test_blocks_name_whole_prefixes_and_chain() -> None:
    a, b = prefix_blocks(prompt(1)), prefix_blocks(prompt(2))
    assert len(a) == 3  # 120 tokens: 3 whole blocks, the partial 4th left out
    assert a[:3] == b[:3]  # the questions differ only after the shared blocks
    other = prefix_blocks([7] + SYSTEM[1:] + [1] * 20)  # same tail, another first token
    assert not set(other) & set(a)  # a block's name depends on everything before it
    assert prefix_blocks(list(range(31))) == ()
    assert len(prefix_blocks(list(range(10_000)), limit=5)) == 5
    with pytest.raises(ValueError):
        prefix_blocks([1, 2], block=0)


def test_prompt_prefers_the_replica_holding_its_prefix() -> None:
    index = PrefixIndex()
    index.record("r1", prefix_blocks(prompt(1)))
    ranks = rank(prefix_blocks(prompt(2)), {"r1": 1, "r2": 0}, index)
    assert ranks == [["r1"], ["r2"]]  # held prefix first, though r2 is idler


def test_longest_match_wins_over_a_shorter_one() -> None:
    index = PrefixIndex()
    index.record("short", prefix_blocks(SYSTEM[:40]))  # holds 1 block of it
    index.record("long", prefix_blocks(prompt(1)))  # holds all 3
    assert rank(prefix_blocks(prompt(9)), {"short": 0, "long": 0}, index)[0] == ["long"]


def test_overloaded_holder_gives_way_to_the_least_loaded() -> None:
    index = PrefixIndex()
    index.record("r1", prefix_blocks(prompt(1)))
    blocks = prefix_blocks(prompt(2))
    assert rank(blocks, {"r1": 4, "r2": 0}, index, max_imbalance=4)[0] == ["r1"]
    assert rank(blocks, {"r1": 5, "r2": 0}, index, max_imbalance=4) == [["r2"], ["r1"]]


def test_no_match_goes_least_loaded_then_to_the_emptier_cache() -> None:
    index = PrefixIndex()
    index.record("r1", prefix_blocks(prompt(1)))
    fresh = prefix_blocks(prompt(1, system=list(range(5000, 5100))))
    assert rank(fresh, {"r1": 0, "r2": 2, "r3": 1}, index) == [["r1"], ["r3"], ["r2"]]
    # equal loads: the replica holding fewer blocks takes the new prefix
    assert rank(fresh, {"r1": 0, "r2": 0}, index) == [["r2"], ["r1"]]
    # a prompt too short to have a whole block is routed by load alone
    assert rank((), {"r1": 1, "r2": 0}, index) == [["r2"], ["r1"]]
    assert rank(fresh, {}, index) == []


def test_two_system_prompts_settle_on_two_replicas() -> None:
    """What the Ray test checks end to end: each prefix keeps to one replica."""
    index = PrefixIndex()
    loads = {"a": 0, "b": 0}
    sys_a, sys_b = list(range(1000, 1100)), list(range(2000, 2100))
    chosen = []
    for q in range(3):
        for system in (sys_a, sys_b):
            blocks = prefix_blocks(prompt(q, system))
            pick = rank(blocks, loads, index)[0][0]
            index.record(pick, blocks)
            chosen.append(pick)
    assert chosen == ["a", "b"] * 3


def test_index_is_bounded_and_forgets_gone_replicas() -> None:
    index = PrefixIndex(capacity=4)
    index.record("r1", prefix_blocks(list(range(32 * 6))))
    assert index.size("r1") == 4
    # the tail went first: the leading blocks, the most shared, are kept
    assert index.match("r1", prefix_blocks(list(range(32 * 6)))) == 4
    index.record("r2", prefix_blocks(prompt(1)))
    index.keep_only(["r2"])
    assert index.size("r1") == 0 and index.match("r2", prefix_blocks(prompt(3))) == 3


def test_offer_gives_the_first_rank_alone_then_everything() -> None:
    ranks = [["r1"], ["r2"], ["r3"]]
    assert offer(ranks, 0, exclusive=2) == ([["r1"]], False)
    assert offer(ranks, 1, exclusive=2) == ([["r1"]], False)
    assert offer(ranks, 2, exclusive=2) == (ranks, True)
    assert offer([["r1"]], 0) == ([["r1"]], True)  # nothing else to wait for

"""promptplan: a colleague's prompt goes before a burst's, in short steps, its last chunk alone."""

from __future__ import annotations

from engines.llm.promptplan import (
    MAX_PASSED,
    Reading,
    busy_seats,
    colleague_step,
    passed_over,
    prompt_chunks,
)


def keys(chosen: list[Reading]) -> list[int]:
    return [r.key for r in chosen]


def test_one_seat_reads_oldest_first_while_the_budget_lasts() -> None:
    readings = [Reading(k, "A", age=10 - k, chunk=40) for k in range(5)]
    assert keys(prompt_chunks(readings, 130, {"A": 5})) == [4, 3, 2]


def test_a_chunk_that_does_not_fit_waits_and_a_smaller_one_goes() -> None:
    readings = [Reading(0, "A", 1, 64), Reading(1, "A", 2, 64), Reading(2, "A", 3, 10)]
    assert keys(prompt_chunks(readings, 100, {"A": 3})) == [0, 2]


def test_the_seat_running_least_reads_first() -> None:
    burst = [Reading(k, "A", age=k, chunk=45) for k in range(7)]
    colleague = Reading(7, "B", age=100, chunk=45)  # arrived last
    chosen = prompt_chunks([*burst, colleague], 520, {"A": 7, "B": 1})
    assert keys(chosen)[0] == 7
    assert keys(chosen)[1:] == list(range(7))  # the burst keeps its own order


def test_contended_steps_read_one_chunk_and_the_colleague_gets_it() -> None:
    burst = [Reading(k, "A", age=k, chunk=45) for k in range(7)]
    colleague = Reading(7, "B", age=100, chunk=45)
    assert keys(prompt_chunks([*burst, colleague], 520, {"A": 7, "B": 1}, cap=64)) == [7]
    assert keys(prompt_chunks(burst, 520, {"A": 7}, cap=64)) == [0]  # then A's, one a step


def test_a_prompt_longer_than_the_cap_still_moves() -> None:
    readings = [Reading(0, "A", 1, 64), Reading(1, "B", 2, 10)]
    assert keys(prompt_chunks(readings, 200, {"A": 1, "B": 1}, cap=32)) == [0]
    assert keys(prompt_chunks(readings, 50, {"A": 1, "B": 1}, cap=32)) == [1]  # over budget
    assert prompt_chunks([], 200, {}, cap=32) == []


def test_a_colleagues_last_chunk_gets_a_step_of_its_own() -> None:
    b_last = Reading(key=7, seat="bob", age=9, chunk=20, last=True)
    a_next = Reading(key=3, seat="alice", age=2, chunk=12, last=True)  # the burst's next prompt
    load = {"alice": 7, "bob": 1}
    assert colleague_step([b_last, a_next], load, waited=False) == [b_last]
    assert colleague_step([b_last, a_next], load, waited=True) is None  # never two in a row
    b_more = Reading(key=7, seat="bob", age=9, chunk=32, last=False)
    assert colleague_step([b_more, a_next], load, waited=False) is None  # not its first token
    a_last = Reading(key=1, seat="alice", age=3, chunk=20, last=True)
    assert colleague_step([a_last], load, waited=False) is None  # the busy seat's own prompt
    assert colleague_step([b_last], {"alice": 1, "bob": 1}, waited=False) is None  # none busy


def test_other_colleagues_prompts_share_that_step() -> None:
    b_last = Reading(key=7, seat="bob", age=9, chunk=12, last=True)
    c_part = Reading(key=6, seat="carol", age=10, chunk=16, last=False)
    a_next = Reading(key=3, seat="alice", age=2, chunk=12, last=True)
    load = {"alice": 6, "bob": 1, "carol": 1}
    assert colleague_step([b_last, c_part, a_next], load, waited=False) == [b_last, c_part]


def test_a_seat_running_several_is_busy_while_another_seat_is_about() -> None:
    assert busy_seats({"alice": 7, "bob": 1}, active=set()) == {"alice"}  # bob runs one
    assert busy_seats({"alice": 7}, active={"alice", "bob"}) == {"alice"}  # bob asked lately
    assert busy_seats({"alice": 7}, active={"alice"}) == set()  # alone: full chunks
    assert busy_seats({"alice": 1, "bob": 1}, active=set()) == set()  # nobody runs several
    assert busy_seats({"alice": 3, "bob": 2}, active=set()) == {"alice", "bob"}


def test_a_prompts_last_chunk_goes_before_older_long_prompts_of_its_seat() -> None:
    long_old = Reading(0, "A", age=1, chunk=32)  # more chunks to come
    long_newer = Reading(1, "A", age=2, chunk=32)
    next_turn = Reading(2, "A", age=3, chunk=20, last=True)  # a chat's next question
    chosen = prompt_chunks([long_old, long_newer, next_turn], 500, {"A": 3}, cap=32)
    assert keys(chosen) == [2]  # its first token now; the long ones one after another
    assert keys(prompt_chunks([long_old, long_newer], 500, {"A": 2}, cap=32)) == [0]


def test_a_prompt_passed_over_max_times_goes_first() -> None:
    starved = Reading(0, "A", age=1, chunk=32, passed=MAX_PASSED)
    short = Reading(2, "A", age=3, chunk=20, last=True)
    assert keys(prompt_chunks([starved, short], 500, {"A": 2}, cap=32)) == [0]
    # only a younger prompt read before it counts as passing it
    older, younger = Reading(0, "A", 1, 32), Reading(1, "A", 2, 32)
    assert passed_over([older, younger], [older]) == []
    assert passed_over([older, younger], [younger]) == [older]
    other_seat = Reading(3, "B", 0, 32)
    assert passed_over([other_seat, younger], [younger]) == []

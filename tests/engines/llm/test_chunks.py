"""The prompt grid (pure): chunk ends and reusable prefixes agree, and depend only on
the tokens before them."""

from __future__ import annotations

import random

from engines.llm.chunks import chunk_end, first_turn_end, reusable

END = 2  # an end-of-turn token


def ends(prompt: list[int], chunk: int, marks: set[int], header: tuple[int, ...] = ()
         ) -> list[int]:
    out, pos, turn = [], 0, first_turn_end(prompt, marks, header)
    while pos < len(prompt):
        pos = chunk_end(len(prompt), pos, chunk, turn)
        out.append(pos)
    return out


def fits(prompt: list[int], shared: int, chunk: int, marks: set[int],
         header: tuple[int, ...] = ()) -> int:
    return reusable(len(prompt), shared, chunk, first_turn_end(prompt, marks, header))


PROMPT = [1, 5, 6, END, 7, 8] + [9] * 10 + [END] + [4] * 3


def test_chunks_end_on_the_grid_and_after_the_first_turn() -> None:
    assert ends(PROMPT, 8, {END}) == [4, 8, 16, 20]
    assert ends(PROMPT, 8, set()) == [8, 16, 20]
    assert ends([END, END, 3], 8, {END}) == [1, 3]
    assert ends([9] * 7 + [END] + [3] * 4, 8, {END}) == [8, 12]  # on the grid already


def test_the_turn_ends_after_the_next_turns_header_or_not_at_all() -> None:
    header = (7, 8)
    assert first_turn_end(PROMPT, {END}, header) == 6
    assert ends(PROMPT, 8, {END}, header) == [6, 8, 16, 20]
    assert fits(PROMPT, 6, 8, {END}, header) == 6
    assert fits(PROMPT, 5, 8, {END}, header) == 0  # inside the header: no boundary yet
    other = [1, 5, 6, END, 9, 9] + [9] * 10  # another header: no turn boundary at all
    assert first_turn_end(other, {END}, header) == 0
    assert ends(other, 8, {END}, header) == [8, 16]


def test_a_reused_prefix_ends_on_the_grid_and_leaves_the_last_token() -> None:
    assert fits(PROMPT, 3, 8, {END}) == 0
    assert fits(PROMPT, 6, 8, {END}) == 4  # the system turn, not the shared 6
    assert fits(PROMPT, 12, 8, {END}) == 8
    assert fits(PROMPT, 18, 8, {END}) == 16
    assert fits(PROMPT, 99, 8, {END}) == 16
    assert fits([3, END], 99, 8, {END}) == 0  # the last token is always read
    assert fits(PROMPT, 6, 8, set()) == 0
    assert fits(PROMPT, 6, 1, set()) == 6  # chunk 1: any prefix


def test_every_reusable_prefix_is_a_chunk_end_and_is_the_longest_one() -> None:
    rng = random.Random(7)
    for _ in range(300):
        prompt = [rng.choice([END, 3, 4, 5, 6]) for _ in range(rng.randint(1, 50))]
        chunk = rng.randint(1, 9)
        bounds = set(ends(prompt, chunk, {END}))
        for shared in range(len(prompt) + 2):
            limit = min(shared, len(prompt) - 1)
            assert (fits(prompt, shared, chunk, {END})
                    == max([b for b in bounds if b <= limit], default=0))


def test_two_prompts_sharing_a_start_share_its_chunk_ends() -> None:
    rng = random.Random(11)
    for header in ((), (3,), (3, 4)):
        for _ in range(300):
            head = [rng.choice([END, 3, 4]) for _ in range(rng.randint(0, 30))]
            a = head + [rng.choice([END, 3, 5]) for _ in range(rng.randint(1, 20))]
            b = head + [rng.choice([END, 4, 6]) for _ in range(rng.randint(1, 20))]
            cut = len(head)
            assert ([e for e in ends(a, 8, {END}, header) if e <= cut]
                    == [e for e in ends(b, 8, {END}, header) if e <= cut])

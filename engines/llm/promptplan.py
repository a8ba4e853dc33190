"""Which prompt chunks one step reads (pure; the scheduler feeds it its running requests).

A step decodes the next token of every generating request and reads whole prompt chunks
of the others while they fit its token budget. Three rules keep one seat's burst from
delaying a colleague's first token:

- order: the prompt of a seat that runs fewer requests is read first (a colleague's only
  request before the tenth request of a batch job); within a seat, a prompt's last chunk
  (its first token comes out of that step: the next question of a chat, a short prompt)
  before the chunks of longer prompts, then the oldest request first, so long prompts
  are read one after another and each gets its first token as soon as it can. A prompt
  that younger ones have passed ``MAX_PASSED`` times goes before them all (nobody waits
  for ever behind a stream of short prompts);
- cap: a step reads at most ``cap`` prompt tokens (the engine's default: half a chunk), so a
  request that arrives mid-step waits for a short step, not for a whole burst's prompts,
  its own prompt is read in the very next step, and requests arriving together get their
  first tokens one after another instead of all at the end of one long step. Reading
  costs about the same per token either way on a CPU (llama.cpp splits a step into a
  micro-batch per prompt length when each slot has its own KV stream); the price is one
  more step per prompt, a few milliseconds. The first chunk in order is always read, so
  a prompt longer than the cap still moves;
- a step of its own (``colleague_step``): the step that reads the last chunk of a
  colleague's only request reads nothing of the busy seat's, neither its next tokens nor
  its prompts.

And while a colleague is about (``busy_seats``), the busy seat's prompts are read in
smaller chunks under a smaller cap, so the step a colleague's request arrives in is short.

A chunk is read whole (the engine sizes it: up to ``prefill_chunk`` tokens from where the
prompt's reading stands), so a chunk that does not fit waits for a later step while
smaller ones behind it may go.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

MAX_PASSED = 4  # steps a prompt may be passed by younger ones of its seat (see order)


@dataclass(frozen=True)
class Reading:
    """A request still reading its prompt: ``chunk`` tokens are next."""

    key: int  # the caller's handle (the slot)
    seat: str
    age: int  # lower is older (the request id)
    chunk: int
    last: bool = False  # the prompt's last chunk: its first token comes out of this step
    passed: int = 0  # steps in which a younger prompt of the same seat was read before it


def prompt_chunks(readings: Sequence[Reading], budget: int, load: Mapping[str, int],
                  cap: int | None = None) -> list[Reading]:
    """The chunks this step reads, in reading order.

    ``budget``: tokens left in the step after the decode tokens; ``load``: requests each
    seat runs; ``cap``: most prompt tokens this step may read (None: the budget only).
    """
    limit = budget if cap is None else min(budget, cap)
    out: list[Reading] = []

    def order(r: Reading) -> tuple[int, int, int]:
        first = r.last or r.passed >= MAX_PASSED
        return load.get(r.seat, 0), 0 if first else 1, r.age

    for r in sorted(readings, key=order):
        if r.chunk <= limit or (not out and r.chunk <= budget):
            out.append(r)
            limit -= r.chunk
            budget -= r.chunk
    return out


def passed_over(readings: Sequence[Reading], chosen: Sequence[Reading]) -> list[Reading]:
    """The readings left out of this step while a younger one of the same seat was read."""
    youngest: dict[str, int] = {}
    for r in chosen:
        youngest[r.seat] = max(youngest.get(r.seat, r.age), r.age)
    taken = {r.key for r in chosen}
    return [r for r in readings
            if r.key not in taken and youngest.get(r.seat, r.age) > r.age]


def colleague_step(chosen: Sequence[Reading], load: Mapping[str, int],
                   waited: bool) -> list[Reading] | None:
    """The chunks of a step given to a colleague's first token, or None for a normal step.

    When ``chosen`` holds the last chunk of a seat's only request while another seat runs
    several, this step reads the prompts of seats running one request only: the busy
    seat's next tokens and prompt chunks wait one step, so that colleague's first token
    comes that much sooner (on 2 cores 7 decode tokens cost ~25 ms, a 20-token chunk of a
    burst's next prompt ~65 ms). Never two steps in a row (``waited``: the step before
    was one), so decoding goes on.
    """
    if waited or max(load.values(), default=0) < 2:
        return None
    if not any(r.last and load.get(r.seat, 0) == 1 for r in chosen):
        return None
    return [r for r in chosen if load.get(r.seat, 0) == 1]


def busy_seats(load: Mapping[str, int], active: Collection[str]) -> set[str]:
    """Seats running several requests while another seat is about: one that runs a request
    (``load``) or sent one lately (``active``). Their prompts are read in short steps, so
    a colleague's request that arrives mid-step waits less: on 2 cores a step that reads
    a 20-token chunk beside 6 decodes takes ~100 ms, one that reads 8 tokens ~60 ms."""
    about = set(active) | {seat for seat, n in load.items() if n > 0}
    return {seat for seat, n in load.items() if n > 1 and about - {seat}}

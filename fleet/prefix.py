"""Which replica should serve a prompt: one that already holds its prefix, then the least
loaded. Plain data and pure functions; ``fleet.router`` feeds them from Ray Serve.

A prompt is cut into whole blocks of ``block`` tokens; block *i* is named by a hash chained
over blocks 0..i, so equal names mean an equal prefix of (i+1)*block tokens. The index
remembers, per replica, the block names of the prompts lately sent to it (a bounded LRU:
an approximation of what its engine's prefix cache still holds). A prompt prefers the
replicas holding its longest matched prefix, unless they carry more than
``max_imbalance`` requests over the least loaded one; every other replica follows, least
loaded first, ties to the replica holding fewer blocks (so new prefixes spread out).
The first rank is offered alone for a few tries (``offer``): a replica slow to answer
Serve's queue-length probe on a busy box must not lose the request to one whose answer is
cached.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

BLOCK_TOKENS = 32
MAX_BLOCKS = 256  # the first 8192 tokens decide; longer prompts share no more than that
CAPACITY = 8192  # block names remembered per replica
MAX_IMBALANCE = 4
EXCLUSIVE_TRIES = 3  # probes of the first rank alone before the others are offered


def prefix_blocks(tokens: Sequence[int], block: int = BLOCK_TOKENS,
                  limit: int = MAX_BLOCKS) -> tuple[int, ...]:
    """Chained names of the prompt's whole leading blocks (a partial last block is left
    out: a cached prefix is reused in whole blocks)."""
    if block < 1:
        raise ValueError("block must be at least one token")
    names: list[int] = []
    name = 0
    end = min(len(tokens) // block, limit) * block
    for start in range(0, end, block):
        name = hash((name, tuple(tokens[start:start + block])))
        names.append(name)
    return tuple(names)


@dataclass
class PrefixIndex:
    """Per replica, the block names of prompts lately routed to it (least recent first)."""

    capacity: int = CAPACITY
    _held: dict[str, OrderedDict[int, None]] = field(default_factory=dict)

    def record(self, replica: str, blocks: Sequence[int]) -> None:
        """``replica`` was sent a prompt of these blocks: it holds them now."""
        held = self._held.setdefault(replica, OrderedDict())
        # leading blocks go in last, so they are evicted last: they are the most shared,
        # and a later block is no use without those before it
        for name in reversed(blocks):
            held[name] = None
            held.move_to_end(name)
        while len(held) > self.capacity:
            held.popitem(last=False)

    def match(self, replica: str, blocks: Sequence[int]) -> int:
        """How many leading blocks of the prompt ``replica`` holds."""
        held = self._held.get(replica)
        if not held:
            return 0
        n = 0
        for name in blocks:
            if name not in held:
                break
            n += 1
        return n

    def size(self, replica: str) -> int:
        return len(self._held.get(replica, ()))

    def keep_only(self, replicas: Iterable[str]) -> None:
        """Forget replicas that are gone (stopped, moved, lost with their box)."""
        live = set(replicas)
        for gone in [r for r in self._held if r not in live]:
            del self._held[gone]


def rank(blocks: Sequence[int], loads: Mapping[str, int], index: PrefixIndex, *,
         max_imbalance: int = MAX_IMBALANCE) -> list[list[str]]:
    """Replicas to try, best first: a first rank of those holding the longest prefix of
    the prompt (when one holds any and is not overloaded), then one rank per other
    replica, least loaded first. ``loads`` names every candidate replica with its
    requests in flight. Empty when there is no replica."""
    if not loads:
        return []
    least = min(loads.values())
    matched = {r: index.match(r, blocks) for r in loads} if blocks else {}
    best = max(matched.values(), default=0)
    preferred = sorted((r for r, m in matched.items()
                        if best > 0 and m == best and loads[r] <= least + max_imbalance),
                       key=lambda r: (loads[r], r))
    rest = sorted((r for r in loads if r not in preferred),
                  key=lambda r: (loads[r], index.size(r), r))
    ranks = [preferred] if preferred else []
    return ranks + [[r] for r in rest]


def offer(ranks: list[list[str]], attempt: int, exclusive: int = EXCLUSIVE_TRIES
          ) -> tuple[list[list[str]], bool]:
    """The ranks to offer on routing ``attempt`` (0 first) and whether Serve should back
    off when none of them takes the request: the first rank alone for ``exclusive``
    attempts (Serve probes it again at once, each time with twice the deadline), then
    every rank, backing off while all are full."""
    if attempt < exclusive and len(ranks) > 1:
        return ranks[:1], False
    return ranks, True

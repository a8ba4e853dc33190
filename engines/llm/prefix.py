"""Prompt prefixes kept for reuse (pure): which slot or saved state shares the longest
start with a new prompt, and a host-RAM store of saved KV states, LRU by bytes.

A request whose prompt starts like a slot's KV content (the same system prompt, the
earlier turns of the same chat) skips reading those tokens. The scheduler asks
``best_match`` for the longest common prefix among its slots and the host store, and puts
a slot's state into the store before its cells are overwritten by an unrelated prompt.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

MIN_REUSE = 16  # tokens: below this a prefix is not worth a copy or a restore


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token sequences."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass(frozen=True)
class Saved:
    """A slot's KV state saved to host memory, with the tokens it holds."""

    tokens: tuple[int, ...]
    state: bytes | bytearray


class HostPrefixCache:
    """Saved KV states, least recently used dropped first when over ``capacity`` bytes."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(0, capacity)
        self._entries: OrderedDict[tuple[int, ...], Saved] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, tokens: Sequence[int], state: bytes | bytearray) -> bool:
        """Keep ``state`` for ``tokens``; False when it cannot fit at all."""
        key = tuple(tokens)
        if not state or len(state) > self.capacity:
            return False
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= len(old.state)
        # a stored prefix of the new tokens is now redundant
        for other in [k for k in self._entries if len(k) <= len(key) and key[:len(k)] == k]:
            self.bytes -= len(self._entries.pop(other).state)
        self._entries[key] = Saved(key, state)
        self.bytes += len(state)
        while self.bytes > self.capacity:
            _, dropped = self._entries.popitem(last=False)
            self.bytes -= len(dropped.state)
        return True

    def best(self, prompt: Sequence[int]) -> tuple[int, Saved | None]:
        """(common prefix length, entry) of the entry sharing the longest start with
        ``prompt``; the entry becomes most recently used."""
        best_n, best = 0, None
        for key, saved in self._entries.items():
            n = common_prefix(prompt, key)
            if n > best_n:
                best_n, best = n, saved
        if best is not None:
            self._entries.move_to_end(best.tokens)
        return best_n, best

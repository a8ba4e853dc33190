"""Waiting requests ordered by seat, not by arrival (pure; the scheduler holds the lock).

Deficit round robin over seats: each seat has its own FIFO queue and a weight; a visit to
a seat adds its weight to its deficit and serves requests while the deficit lasts, so
seats share the slots in proportion to their weights whatever their queue lengths, and a
seat's own requests keep their order. ``background`` seats (batch jobs) are served only
when no interactive seat is waiting, and never starve when the box is otherwise idle.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class _Seat(Generic[T]):
    items: deque[T] = field(default_factory=deque)
    weight: float = 1.0
    deficit: float = 0.0


class FairQueue(Generic[T]):
    """Per-seat FIFO queues served by weighted deficit round robin, interactive first."""

    def __init__(self) -> None:
        self._seats: dict[tuple[bool, str], _Seat[T]] = {}
        self._rings: tuple[deque[str], deque[str]] = (deque(), deque())  # interactive, bg
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[T]:
        for seat in self._seats.values():
            yield from seat.items

    def push(self, item: T, seat: str = "", *, weight: float = 1.0,
             background: bool = False) -> None:
        key = (background, seat)
        entry = self._seats.get(key)
        if entry is None:
            entry = self._seats[key] = _Seat()
            self._rings[background].append(seat)
        entry.weight = max(weight, 0.01)
        entry.items.append(item)
        self._len += 1

    def pop(self, eligible: Callable[[str], bool] = lambda seat: True) -> T | None:
        """The next request, or None when every waiting seat is ineligible (at its limit)."""
        for background in (False, True):
            ring = self._rings[background]
            for _ in range(len(ring) * 2 + 2):  # each seat visited at most twice per call
                if not ring:
                    break
                name = ring[0]
                seat = self._seats[(background, name)]
                if not eligible(name):
                    ring.rotate(-1)
                    continue
                if seat.deficit < 1:
                    seat.deficit += seat.weight
                    if seat.deficit < 1:
                        ring.rotate(-1)
                        continue
                seat.deficit -= 1
                item = seat.items.popleft()
                self._len -= 1
                if not seat.items:
                    self._drop(background, name)
                elif seat.deficit < 1:
                    ring.rotate(-1)
                return item
        return None

    def remove_where(self, pred: Callable[[T], bool]) -> list[T]:
        """Take out (and return) every waiting item for which ``pred`` is true."""
        gone: list[T] = []
        for (background, name), seat in list(self._seats.items()):
            keep = deque(x for x in seat.items if not pred(x))
            gone.extend(x for x in seat.items if pred(x))
            self._len -= len(seat.items) - len(keep)
            seat.items = keep
            if not keep:
                self._drop(background, name)
        return gone

    def drain(self) -> list[T]:
        items = list(self)
        self._seats.clear()
        for ring in self._rings:
            ring.clear()
        self._len = 0
        return items

    def waiting(self) -> dict[str, int]:
        """Waiting requests per seat (interactive and background together)."""
        out: dict[str, int] = {}
        for (_, name), seat in self._seats.items():
            out[name] = out.get(name, 0) + len(seat.items)
        return out

    def _drop(self, background: bool, name: str) -> None:
        del self._seats[(background, name)]
        self._rings[background].remove(name)

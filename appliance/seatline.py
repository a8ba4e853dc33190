"""A seat over its ``max_concurrent`` waits its turn in its own line instead of a 429.

Clients such as LangChain's ``batch()`` or eight parallel ``AsyncOpenAI`` calls send more
requests at once than a seat may run; they are held here, first come first served per
seat, and admitted as the seat's running requests finish. The line is bounded: a seat
with ``max_waiting`` requests already waiting, or a request that waited ``max_wait_s``,
gets 429 with Retry-After. Rate and token limits still answer 429 at once.
"""

from __future__ import annotations

import asyncio
from collections import deque

from licensing.errors import RateLimited, SeatBusy
from licensing.guard import SeatContext
from licensing.limits import SeatLimiter

POLL_S = 0.05  # how often the head of a line tries again (slots free when responses end)


class SeatLines:
    """Per-seat FIFO lines in front of ``SeatLimiter.acquire`` (event loop only)."""

    def __init__(self, limiter: SeatLimiter, *, max_waiting: int = 64,
                 max_wait_s: float = 600.0) -> None:
        self.limiter = limiter
        self.max_waiting = max_waiting
        self.max_wait_s = max_wait_s
        self._lines: dict[int, deque[object]] = {}

    def waiting(self, seat_id: int) -> int:
        return len(self._lines.get(seat_id, ()))

    async def acquire(self, ctx: SeatContext) -> None:
        """Take one of the seat's slots, waiting in line for it if need be."""
        line = self._lines.setdefault(ctx.seat_id, deque())
        if not line:
            try:
                self.limiter.acquire(ctx.seat_id, ctx.name, ctx.limits)
                return
            except SeatBusy:
                pass
        if len(line) >= self.max_waiting:
            raise RateLimited(f"seat {ctx.name!r} already has {len(line)} requests waiting "
                              f"for one of its {ctx.limits.max_concurrent} slots", 5)
        me = object()
        line.append(me)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        try:
            while True:
                if line[0] is me:
                    try:
                        self.limiter.acquire(ctx.seat_id, ctx.name, ctx.limits)
                        return
                    except SeatBusy:
                        pass
                if loop.time() >= deadline:
                    raise RateLimited(f"seat {ctx.name!r} waited {self.max_wait_s:g}s for one "
                                      f"of its {ctx.limits.max_concurrent} slots", 5)
                await asyncio.sleep(POLL_S)
        finally:
            line.remove(me)
            if not line:
                self._lines.pop(ctx.seat_id, None)

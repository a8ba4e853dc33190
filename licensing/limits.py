"""In-process per-seat limits: concurrent requests, requests per minute, tokens per day.

Concurrency and the per-minute window live in memory (they reset on restart, which is
fine: both are short-lived). Tokens per day are read from the usage table once per seat
and UTC day, then kept up to date in memory as usage is recorded.

Tokens are reserved before they are spent: ``reserve(seat_id, name, limits, need)`` holds a
request's worst case (prompt + ``max_tokens``, or an embedding's input size) against
``tokens_per_day`` together with every other request in flight, and raises RateLimited (429)
when it does not fit; ``settle(reservation, used)`` swaps the hold for the real count once
the request is done. ``optional`` tokens are granted only as far as the day allows (a
generation without ``max_tokens`` gets what remains, never more).
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from licensing.errors import RateLimited, SeatBusy
from licensing.seats import SeatLimits, utc_day

WINDOW = 60.0


@dataclass(eq=False)
class Reservation:
    """Tokens held for one request until ``SeatLimiter.settle``; ``tokens`` were granted."""

    seat_id: int
    tokens: int
    settled: bool = field(default=False)


class SeatLimiter:
    """Admission control for seats; every method is thread-safe."""

    def __init__(self, tokens_on: Callable[[int, str], int], clock: Callable[[], float]) -> None:
        self._tokens_on, self._clock = tokens_on, clock
        self._lock = threading.Lock()
        self._active: dict[int, int] = {}
        self._recent: dict[int, deque[float]] = {}
        self._tokens: dict[int, tuple[str, int]] = {}
        self._held: dict[int, int] = {}  # tokens reserved by requests still running

    def acquire(self, seat_id: int, name: str, lim: SeatLimits) -> None:
        """Take a concurrency slot and count one request; RateLimited if over a limit."""
        now = self._clock()
        with self._lock:
            if lim.tokens_per_day:
                used = self._tokens_today(seat_id, now) + self._held.get(seat_id, 0)
                if used >= lim.tokens_per_day:
                    midnight = (math.floor(now / 86_400) + 1) * 86_400
                    raise RateLimited(
                        f"seat {name!r} used its {lim.tokens_per_day} tokens for today "
                        "(UTC)", math.ceil(midnight - now)
                    )  # fmt: skip
            if lim.max_concurrent and self._active.get(seat_id, 0) >= lim.max_concurrent:
                raise SeatBusy(
                    f"seat {name!r} already has {lim.max_concurrent} request(s) running", 1
                )
            if lim.requests_per_minute:
                recent = self._recent.setdefault(seat_id, deque())
                while recent and recent[0] <= now - WINDOW:
                    recent.popleft()
                if len(recent) >= lim.requests_per_minute:
                    raise RateLimited(
                        f"seat {name!r} is limited to {lim.requests_per_minute} "
                        "requests per minute", math.ceil(recent[0] + WINDOW - now)
                    )  # fmt: skip
                recent.append(now)
            self._active[seat_id] = self._active.get(seat_id, 0) + 1

    def release(self, seat_id: int) -> None:
        """Give back the slot taken by ``acquire``."""
        with self._lock:
            left = self._active.get(seat_id, 0) - 1
            if left > 0:
                self._active[seat_id] = left
            else:
                self._active.pop(seat_id, None)

    def active(self, seat_id: int) -> int:
        with self._lock:
            return self._active.get(seat_id, 0)

    def reserve(
        self, seat_id: int, name: str, lim: SeatLimits, need: int, optional: int = 0
    ) -> Reservation:
        """Hold ``need`` tokens plus as many of ``optional`` as today still allows.

        RateLimited (429) when ``need`` does not fit in what is left of ``tokens_per_day``."""
        need, optional = max(0, int(need)), max(0, int(optional))
        now = self._clock()
        with self._lock:
            if not lim.tokens_per_day:
                res = Reservation(seat_id, need + optional)
            else:
                left = lim.tokens_per_day - self._tokens_today(seat_id, now) \
                    - self._held.get(seat_id, 0)
                if need > left:
                    midnight = (math.floor(now / 86_400) + 1) * 86_400
                    raise RateLimited(
                        f"seat {name!r} has {max(0, left)} of its {lim.tokens_per_day} tokens "
                        f"for today (UTC) left; this request may use {need}",
                        math.ceil(midnight - now))  # fmt: skip
                res = Reservation(seat_id, need + min(optional, left - need))
            self._held[seat_id] = self._held.get(seat_id, 0) + res.tokens
            return res

    def settle(self, res: Reservation, used: int, ts: float) -> None:
        """Release ``res`` and account ``used`` tokens (the real count); idempotent."""
        with self._lock:
            if not res.settled:
                res.settled = True
                left = self._held.get(res.seat_id, 0) - res.tokens
                if left > 0:
                    self._held[res.seat_id] = left
                else:
                    self._held.pop(res.seat_id, None)
            self._add(res.seat_id, used, ts)

    def add_tokens(self, seat_id: int, tokens: int, ts: float) -> None:
        """Account tokens just recorded in the usage table."""
        with self._lock:
            self._add(seat_id, tokens, ts)

    def _add(self, seat_id: int, tokens: int, ts: float) -> None:
        used = self._tokens_today(seat_id, ts)
        self._tokens[seat_id] = (utc_day(ts), used + tokens)

    def _tokens_today(self, seat_id: int, now: float) -> int:
        day = utc_day(now)
        cached = self._tokens.get(seat_id)
        if cached is None or cached[0] != day:
            cached = (day, self._tokens_on(seat_id, day))
            self._tokens[seat_id] = cached
        return cached[1]

"""Bounded load (bench/load.py) against a box of its own, across several seats.

Default: 16 clients x 10 s after a 4 s warm-up; HARDENING_FULL=1: 64 clients x 60 s.
What must hold: no answer but 200, 429 (seat limits) and 503 with Retry-After (queue
full); the server's RSS after the run within 10 % of its RSS after warm-up; and the usage
table holds every answered request exactly once (per seat: rows == answers, rows with a
status below 400 == the 200s the clients saw).
"""

from __future__ import annotations

import asyncio
import time

import psutil
import pytest

from bench.load import LoadConfig, run_load
from tests.hardening.conftest import FULL, admin, gauge, license_box, new_seat, wait_for

pytestmark = pytest.mark.slow

CLIENTS, DURATION, WARMUP = (64, 60.0, 15.0) if FULL else (16, 10.0, 4.0)


def _usage(box, seat_id: int) -> tuple[int, int]:
    """(rows, rows with status < 400) of a seat, from GET /admin/usage."""
    rows = admin(box, "GET", f"/admin/usage?seat_id={seat_id}&period=month&limit=366").json()
    return (sum(r["requests"] for r in rows),
            sum(r["requests"] - r["errors"] for r in rows))


def test_bounded_load_mixed_routes_many_seats(fresh_box, vendor_key) -> None:
    box = fresh_box
    license_box(box, vendor_key, seats=8)
    seats = [new_seat(box, f"load-{i}", max_concurrent=0, requests_per_minute=0,
                      tokens_per_day=0) for i in range(3)]
    # One tightly limited seat, so the 429 path is under load too (a rate limit: a seat
    # over max_concurrent waits in its line rather than getting 429).
    seats.append(new_seat(box, "load-limited", max_concurrent=2, requests_per_minute=4,
                          tokens_per_day=0))
    keys = [k for _, k in seats]
    server = psutil.Process(box.proc.pid)
    t0 = time.perf_counter()

    # Warm-up: every route once (loads every model), then the same concurrency for a while.
    prime = asyncio.run(run_load(LoadConfig(box.base_url, keys[:1], clients=1,
                                            duration_s=0.0, seed=0, sweep=True)))
    assert not prime.errors, prime.errors
    t_prime = time.perf_counter() - t0
    warm = asyncio.run(run_load(LoadConfig(box.base_url, keys, clients=CLIENTS,
                                           duration_s=WARMUP, seed=1)))
    assert not warm.errors, warm.errors[:10]
    rss_warm = server.memory_info().rss

    result = asyncio.run(run_load(LoadConfig(box.base_url, keys, clients=CLIENTS,
                                             duration_s=DURATION, seed=2)))
    rss_after = server.memory_info().rss
    print(f"\nload: prime (every route once, models loaded) {t_prime:.1f} s")
    print(f"load: {CLIENTS} clients x {DURATION:.0f} s, {len(keys)} seats; RSS warm "
          f"{rss_warm / 2**20:.0f} MiB, after {rss_after / 2**20:.0f} MiB\n{result.table()}")

    assert not result.errors, result.errors[:10]
    assert result.total_ok >= CLIENTS, "the box should have served real traffic"
    for route in ("chat", "chat_stream", "embeddings"):
        assert result.summary()[route]["ok"] > 0, route
    assert sum(s.get(429, 0) for s in result.statuses.values()) > 0, \
        "the limited seat should have been refused at least once"
    assert rss_after <= rss_warm * 1.10, (rss_warm, rss_after)

    # Every answered request is in the usage table exactly once, per seat.
    # (the /metrics scrape is itself in flight while it is served)
    assert wait_for(lambda: gauge(box, "appliance_requests_in_flight") == 1, timeout=30)
    for (seat_id, key) in seats:
        answered = sum(r.answered_by_key[key] for r in (prime, warm, result))
        ok = sum(r.ok_by_key[key] for r in (prime, warm, result))
        assert wait_for(lambda s=seat_id, a=answered: _usage(box, s)[0] == a, timeout=15), \
            (seat_id, _usage(box, seat_id), answered, ok)
        assert _usage(box, seat_id) == (answered, ok)
    assert gauge(box, "appliance_engine_active_slots") == 0

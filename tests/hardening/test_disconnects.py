"""Streamed requests cut off at random points free everything and are still metered.

20 streams (HARDENING_FULL=1: 100), each on its own connection, closed after a random
number of server-sent events (0 = right after the headers). Afterwards: the engine's
active slots and the requests in flight are back to 0 (the /metrics scrape counts itself
as 1), the seat can still run ``max_concurrent`` requests at once (no leaked seat slot),
the server has no more threads than before, and every cut request is in the usage table
with at least the tokens the client had received.
"""

from __future__ import annotations

import csv
import io
import json
import random
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
import pytest

from tests.conftest import LLM
from tests.hardening.conftest import FULL, admin, gauge, new_seat, wait_for

pytestmark = pytest.mark.slow

CUTS = 100 if FULL else 20
MAX_CONCURRENT = 3
THREAD_JITTER = 2


def _chat(max_tokens: int, stream: bool, seed: int) -> dict:
    body = {"model": LLM, "messages": [{"role": "user", "content": "Tell me a long story."}],
            "max_tokens": max_tokens, "temperature": 0.8, "seed": seed, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


def _cut_stream(base_url: str, key: str, after_events: int, seed: int) -> int:
    """Open a stream, read ``after_events`` events, hang up; return content chunks seen."""
    seen = 0
    with httpx.Client(base_url=base_url, timeout=60) as client, client.stream(
            "POST", "/v1/chat/completions", json=_chat(32, True, seed),
            headers={"Authorization": f"Bearer {key}"}) as r:
        assert r.status_code == 200, r.read()
        events = 0
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            if events >= after_events:
                break
            events += 1
            if line != "data: [DONE]":
                delta = json.loads(line[6:])["choices"]
                if delta and delta[0]["delta"].get("content"):
                    seen += 1
    return seen


def _usage_rows(box, seat_id: int) -> list[dict]:
    text = admin(box, "GET", f"/admin/usage.csv?seat_id={seat_id}").text
    return list(csv.DictReader(io.StringIO(text)))


def _threads(proc: psutil.Process) -> int:
    return proc.num_threads()


def test_cut_streams_free_slots_threads_and_are_metered(fresh_box) -> None:
    box = fresh_box
    seat_id, key = new_seat(box, "cutter", max_concurrent=MAX_CONCURRENT,
                            requests_per_minute=0, tokens_per_day=0)
    server = psutil.Process(box.proc.pid)
    auth = {"Authorization": f"Bearer {key}"}

    def full(i: int) -> int:
        r = httpx.post(box.base_url + "/v1/chat/completions", json=_chat(4, i % 2 == 0, i),
                       headers=auth, timeout=60)
        return r.status_code

    # Warm-up with the same shape of work (whole and cut streams, MAX_CONCURRENT at once),
    # so thread pools have their steady size before the threads are counted.
    with ThreadPoolExecutor(MAX_CONCURRENT) as pool:
        assert list(pool.map(full, range(MAX_CONCURRENT))) == [200] * MAX_CONCURRENT
        list(pool.map(lambda i: _cut_stream(box.base_url, key, i % 3, 1000 + i),
                      range(MAX_CONCURRENT * 2)))
    assert wait_for(lambda: gauge(box, "appliance_engine_active_slots") == 0, timeout=60)
    assert wait_for(lambda: gauge(box, "appliance_requests_in_flight") == 1, timeout=30)
    threads_before = _threads(server)
    rows_before = len(_usage_rows(box, seat_id))
    tokens_before = gauge(box, "appliance_tokens_out_total")

    rng = random.Random(8)
    plan = [rng.choice([0, 1, 2, 3, 5]) for _ in range(CUTS)]
    with ThreadPoolExecutor(MAX_CONCURRENT) as pool:
        seen = list(pool.map(lambda a: _cut_stream(box.base_url, key, a[1], a[0]),
                             enumerate(plan)))

    assert wait_for(lambda: gauge(box, "appliance_engine_active_slots") == 0, timeout=30), \
        "an engine slot stayed taken after its client went away"
    # The scrape of /metrics is itself in flight while it is served.
    assert wait_for(lambda: gauge(box, "appliance_requests_in_flight") == 1, timeout=30)
    # Usage: one row per cut request, with at least the tokens the client saw.
    assert wait_for(lambda: len(_usage_rows(box, seat_id)) == rows_before + CUTS, timeout=15)
    rows = _usage_rows(box, seat_id)[rows_before:]
    assert all(r["route"] == "/v1/chat/completions" for r in rows)
    assert sum(int(r["tokens_in"]) for r in rows) > 0
    assert sum(int(r["tokens_out"]) for r in rows) >= sum(seen), (
        "tokens generated for a cut stream are not metered", sum(seen),
        [r["tokens_out"] for r in rows])

    # The token counters of /metrics see the cut streams too.
    assert wait_for(lambda: gauge(box, "appliance_tokens_out_total") - tokens_before
                    >= sum(seen), timeout=15)

    # The seat's concurrency slots all came back: max_concurrent requests at once all pass.
    with ThreadPoolExecutor(MAX_CONCURRENT) as pool:
        statuses = list(pool.map(full, range(MAX_CONCURRENT)))
    assert statuses == [200] * MAX_CONCURRENT, statuses
    # A leak would grow with the number of cuts; allow the thread pools a little jitter.
    assert wait_for(lambda: _threads(server) <= threads_before + THREAD_JITTER, timeout=30), \
        (threads_before, _threads(server))
    print(f"\ndisconnects: {CUTS} cut streams; server threads {threads_before} before, "
          f"{_threads(server)} after; tokens metered {sum(int(r['tokens_out']) for r in rows)}"
          f" >= {sum(seen)} chunks seen")


def test_non_streamed_request_stops_when_its_client_hangs_up(fresh_box) -> None:
    """A plain (non-streamed) chat whose client times out is cancelled: its engine slot and
    seat slot come back long before ``max_tokens`` could be generated, and the usage row
    says 499 with the tokens produced until then."""
    box = fresh_box
    seat_id, key = new_seat(box, "impatient", max_concurrent=1, requests_per_minute=0,
                            tokens_per_day=0)
    warm = httpx.post(box.base_url + "/v1/chat/completions", json=_chat(2, False, 6),
                      timeout=120, headers={"Authorization": f"Bearer {key}"})
    assert warm.status_code == 200, warm.text  # the model is loaded before the clock runs
    rows_before = len(_usage_rows(box, seat_id))
    body = _chat(2000, False, 7)  # the slot holds 2,048 tokens
    body["logit_bias"] = {"0": -100, "1": -100, "2": -100}  # SmolLM2's end tokens: never stop
    with pytest.raises(httpx.TimeoutException):
        httpx.post(box.base_url + "/v1/chat/completions", json=body, timeout=1.5,
                   headers={"Authorization": f"Bearer {key}"})
    # 2,000 tokens take tens of seconds here; the slot is back within a few.
    assert wait_for(lambda: gauge(box, "appliance_engine_active_slots") == 0, timeout=10), \
        "the generation went on after its client left"
    assert wait_for(lambda: len(_usage_rows(box, seat_id)) == rows_before + 1, timeout=10)
    row = _usage_rows(box, seat_id)[-1]
    assert row["status"] == "499" and 0 < int(row["tokens_out"]) < 2000, row
    # The seat's one slot is free again.
    r = httpx.post(box.base_url + "/v1/chat/completions", json=_chat(2, False, 8), timeout=60,
                   headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text

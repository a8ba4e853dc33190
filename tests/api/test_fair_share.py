"""Seats on the LLM path: a seat over max_concurrent waits its turn instead of 429, seat
share and priority are set by the admin, queues show per seat, and prompt caching is
reported the way OpenAI reports it (``usage.prompt_tokens_details.cached_tokens``)."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

from tests.conftest import LLM
from tests.hardening.conftest import admin, new_seat

pytestmark = pytest.mark.slow

SYSTEM = ("You are the help desk assistant of ACME Corporation. " * 30
          + "Answer briefly and politely.")


@pytest.fixture
def seat(box):
    """A user seat for one test, deleted after it (the evaluation licence has 3 seats)."""
    made: list[int] = []

    def make(name: str, **limits: int) -> tuple[int, str]:
        seat_id, key = new_seat(box, name, **limits)
        made.append(seat_id)
        return seat_id, key

    yield make
    for seat_id in made:
        assert admin(box, "DELETE", f"/admin/seats/{seat_id}").status_code == 200


def test_eight_parallel_calls_on_a_four_request_seat_all_succeed(box, seat) -> None:
    _, key = seat("parallel", max_concurrent=4)
    client = openai.AsyncOpenAI(base_url=box.base_url + "/v1", api_key=key, max_retries=0,
                                timeout=300)

    async def one(i: int) -> str:
        r = await client.chat.completions.create(
            model=LLM, max_tokens=8, temperature=0,
            messages=[{"role": "user", "content": f"Say the number {i}."}])
        return r.choices[0].finish_reason

    async def all_of_them() -> list[str]:
        try:
            return await asyncio.gather(*(one(i) for i in range(8)))
        finally:
            await client.close()

    assert len(asyncio.run(all_of_them())) == 8  # no 429: the extra four waited


def test_seat_share_and_priority_are_admin_settings(box, seat) -> None:
    seat_id, _ = seat("nightly-batch")
    r = admin(box, "PATCH", f"/admin/seats/{seat_id}", json={"priority": "batch", "share": 3})
    assert r.status_code == 200, r.text
    assert (r.json()["priority"], r.json()["share"]) == ("batch", 3)
    assert r.json()["max_concurrent"] == 4  # untouched fields keep their value
    bad = admin(box, "PATCH", f"/admin/seats/{seat_id}", json={"priority": "urgent"})
    assert bad.status_code == 400 and "priority" in bad.text
    audit = admin(box, "GET", "/admin/audit", params={"q": "seat.limits"}).json()["rows"]
    assert audit and audit[-1]["details"]["priority"] == "batch"
    status = admin(box, "GET", "/admin/status").json()
    assert "queues" in status


def test_cached_tokens_are_reported(box) -> None:
    client = openai.OpenAI(base_url=box.base_url + "/v1", api_key=box.api_key, max_retries=0)

    def ask(question: str) -> openai.types.CompletionUsage:
        r = client.chat.completions.create(
            model=LLM, max_tokens=4, temperature=0,
            messages=[{"role": "system", "content": SYSTEM},
                      {"role": "user", "content": question}])
        assert r.usage is not None
        return r.usage

    ask("Where is my parcel?")
    second = ask("How do I reset my password?")
    assert second.prompt_tokens_details is not None
    assert second.prompt_tokens_details.cached_tokens >= 256  # the shared system prompt
    text = httpx.get(box.base_url + "/metrics", timeout=30,
                     headers={"Authorization": f"Bearer {box.api_key}"}).text
    assert "appliance_engine_prefix_hits" in text and "appliance_engine_prefix_host_bytes" in text

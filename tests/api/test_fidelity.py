"""What OpenAI clients rely on: explicit nulls mean the default, a request id on every
answer, and context errors worded as OpenAI words them (litellm maps them by text)."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.conftest import LLM

pytestmark = pytest.mark.slow


def _chat(box, **body) -> httpx.Response:
    return httpx.post(box.base_url + "/v1/chat/completions", timeout=120,
                      headers={"Authorization": f"Bearer {box.api_key}",
                               "X-Request-ID": "trace-42"},
                      json={"model": LLM, "messages": [{"role": "user", "content": "Hi"}],
                            "max_tokens": 2, **body})


def test_explicit_nulls_and_top_p_zero_are_accepted(box) -> None:
    r = _chat(box, temperature=None, top_p=None, n=None, stream=None, stop=None, seed=None)
    assert r.status_code == 200, r.text
    assert _chat(box, top_p=0).status_code == 200


def test_every_answer_carries_a_request_id(box) -> None:
    assert _chat(box).headers["x-request-id"] == "trace-42"
    r = httpx.get(box.base_url + "/healthz", headers={"X-Request-ID": "bad id; drop table"})
    assert r.headers["x-request-id"].startswith("req_")


def test_context_length_error_is_worded_like_openai(client) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=LLM, max_tokens=8,
                                       messages=[{"role": "user", "content": "word " * 5000}])
    assert exc.value.body["code"] == "context_length_exceeded"
    assert "This model's maximum context length is" in exc.value.body["message"]

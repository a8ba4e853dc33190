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


QUESTION = [{"role": "user", "content": "List the days of the week."}]


def test_penalties_and_logit_bias_are_honoured(client) -> None:
    def text(**kw) -> str:
        r = client.chat.completions.create(model=LLM, messages=QUESTION, temperature=0,
                                           max_tokens=32, **kw)
        return r.choices[0].message.content or ""

    plain = text()
    assert plain and text() == plain  # greedy: repeatable
    assert text(frequency_penalty=2.0) != plain
    loop = "one two one two one two one two one two"  # the model goes on repeating
    echo = client.completions.create(model=LLM, prompt=loop, temperature=0,
                                     max_tokens=16).choices[0].text
    assert client.completions.create(model=LLM, prompt=loop, temperature=0, max_tokens=16,
                                     presence_penalty=2.0).choices[0].text != echo
    # the most common tokens have the lowest ids in this vocabulary: ban 1,024 of them
    assert text(logit_bias={str(t): -100 for t in range(1024)}) != plain


@pytest.mark.parametrize("extra,named", [
    ({"functions": [{"name": "f", "parameters": {}}]}, "functions"),
    ({"function_call": "auto"}, "function_call"),
    ({"n": 9}, "n"),  # more than the test model's 8 slots
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"reasoning_effort": "high"}, "reasoning_effort"),
    ({"frobnicate": 1}, "frobnicate"),
])
def test_parameters_the_box_cannot_honour_are_refused_by_name(box, extra, named) -> None:
    r = _chat(box, **extra)
    assert r.status_code == 400, r.text
    assert f"'{named}'" in r.json()["error"]["message"]


def test_parameters_that_cannot_change_the_answer_are_accepted(box) -> None:
    r = _chat(box, user="u1", metadata={"a": "b"}, store=False, tools=[], logprobs=False,
              parallel_tool_calls=True, tool_choice="none")
    assert r.status_code == 200, r.text


def test_embeddings_refuse_dimensions(box) -> None:
    r = httpx.post(box.base_url + "/v1/embeddings", timeout=60,
                   headers={"Authorization": f"Bearer {box.api_key}"},
                   json={"model": LLM, "input": "hello", "dimensions": 64})
    assert r.status_code == 400 and "'dimensions'" in r.text

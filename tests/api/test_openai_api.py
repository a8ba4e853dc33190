"""The OpenAI-compatible API, driven by the official `openai` client against a real server."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import LLM

pytestmark = pytest.mark.slow
CHAT = [{"role": "user", "content": "List three fruits, comma separated."}]


def test_models_list_offers_chat_models_and_the_rest_on_request(box, client) -> None:
    models = {m.id: m for m in client.models.list()}
    assert LLM in models and "ppocr-v4" not in models  # a chat picker sees chat models
    assert models[LLM].model_extra["capabilities"] == ["chat", "completions", "embeddings"]
    every = httpx.get(box.base_url + "/v1/models", params={"purpose": "all"},
                      headers={"Authorization": f"Bearer {box.api_key}"}).json()["data"]
    assert {m["id"]: m["capabilities"] for m in every}["ppocr-v4"] == ["ocr"]
    ocr = httpx.get(box.base_url + "/v1/models", params={"purpose": "ocr"},
                    headers={"Authorization": f"Bearer {box.api_key}"}).json()["data"]
    assert [m["id"] for m in ocr] == ["ppocr-v4"]


def test_chat_stream_equals_non_stream_at_temperature_zero(client: openai.OpenAI) -> None:
    full = client.chat.completions.create(model=LLM, messages=CHAT, temperature=0, seed=7,
                                          max_tokens=24)
    text = full.choices[0].message.content
    assert text and text.strip()
    assert full.usage.completion_tokens > 0 and full.usage.prompt_tokens > 5
    assert full.choices[0].finish_reason in ("stop", "length")
    chunks = list(client.chat.completions.create(
        model=LLM, messages=CHAT, temperature=0, seed=7, max_tokens=24, stream=True,
        stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and
              c.choices[0].finish_reason]
    assert finals == [full.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_completions_and_max_tokens(client: openai.OpenAI) -> None:
    r = client.completions.create(model=LLM, prompt="The capital of France is", max_tokens=5,
                                  temperature=0)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 5
    assert "Paris" in r.choices[0].text


def test_stop_sequence_is_not_emitted(client: openai.OpenAI) -> None:
    r = client.completions.create(model=LLM, prompt="Count: 1, 2, 3, 4,", max_tokens=20,
                                  temperature=0, stop=["7"])
    assert "7" not in r.choices[0].text
    assert r.choices[0].finish_reason == "stop"


def test_json_schema_output_validates(client: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"},
                                               "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    r = client.chat.completions.create(
        model=LLM, temperature=0, max_tokens=60,
        messages=[{"role": "user", "content": "Give a person as JSON with name and age."}],
        response_format={"type": "json_schema",
                         "json_schema": {"name": "person", "schema": schema}})
    data = json.loads(r.choices[0].message.content)
    jsonschema.validate(data, schema)


def test_embeddings_have_model_dimension(client: openai.OpenAI) -> None:
    r = client.embeddings.create(model=LLM, input=["hello world", "goodbye"])
    assert len(r.data) == 2
    assert all(len(d.embedding) == 576 for d in r.data)
    norm = sum(x * x for x in r.data[0].embedding) ** 0.5
    assert abs(norm - 1.0) < 1e-3
    assert r.usage.prompt_tokens > 0


def test_unknown_model_is_openai_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="no-such-model", messages=CHAT)
    body = exc.value.body
    assert body["code"] == "model_not_found" and "no-such-model" in body["message"]


def test_prompt_longer_than_context_is_400_with_numbers(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model=LLM, prompt="word " * 5000, max_tokens=4)
    assert exc.value.body["code"] == "context_length_exceeded"
    assert "2048" in exc.value.body["message"]


@pytest.mark.parametrize("body", [
    {"model": LLM},
    {"model": LLM, "messages": []},
    {"model": LLM, "messages": [{"role": "wizard", "content": "x"}]},
    {"model": LLM, "messages": CHAT, "temperature": 9},
    {"model": LLM, "messages": CHAT, "max_tokens": -1},
    {"model": LLM, "messages": CHAT, "n": 9},  # more than its 8 slots
    {"messages": CHAT},
])
def test_malformed_chat_bodies_are_400(box, body) -> None:
    r = httpx.post(box.base_url + "/v1/chat/completions", json=body,
                   headers={"Authorization": f"Bearer {box.api_key}"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["message"]


def test_non_json_body_is_400(box) -> None:
    r = httpx.post(box.base_url + "/v1/chat/completions", content=b"{not json",
                   headers={"Authorization": f"Bearer {box.api_key}",
                            "Content-Type": "application/json"})
    assert r.status_code == 400
    assert "error" in r.json()


def test_disconnect_mid_stream_leaves_server_healthy(box, client: openai.OpenAI) -> None:
    body = {"model": LLM, "messages": CHAT, "max_tokens": 400, "stream": True,
            "temperature": 0.7}
    with httpx.stream("POST", box.base_url + "/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {box.api_key}"}, timeout=30) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        got = [next(lines) for _ in range(6)]
        assert any(line.startswith("data: ") for line in got)
    assert httpx.get(box.base_url + "/healthz").status_code == 200
    r2 = client.chat.completions.create(model=LLM, messages=CHAT, max_tokens=4, temperature=0)
    assert r2.choices[0].message.content is not None


def test_metrics_parse_and_count_requests(box, client: openai.OpenAI) -> None:
    def count() -> float:
        text = httpx.get(box.base_url + "/metrics",
                         headers={"Authorization": f"Bearer {box.api_key}"}).text
        total = 0.0
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if (s.name == "appliance_requests_total"
                        and s.labels.get("route") == "/v1/completions"
                        and s.labels.get("status") == "200"):
                    total += s.value
        return total

    before = count()
    for _ in range(3):
        client.completions.create(model=LLM, prompt="Hi", max_tokens=2)
    assert count() == before + 3
    text = httpx.get(box.base_url + "/metrics",
                     headers={"Authorization": f"Bearer {box.api_key}"}).text
    names = {f.name for f in text_string_to_metric_families(text)}
    assert {"appliance_tokens_out", "appliance_time_to_first_token_seconds",
            "appliance_model_loaded"} <= names


def test_readyz_reports_ready(box) -> None:
    r = httpx.get(box.base_url + "/readyz")
    assert r.status_code == 200 and r.json()["checks"]["default_model"] == "ok"

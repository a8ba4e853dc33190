"""OpenAI's Responses API through a real box with the official client: text, instructions,
streaming, structured output, a function tool round trip, conversations continued with
``previous_response_id``, per-seat storage and retention, and refusals by name."""

from __future__ import annotations

import json
import time

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel

from appliance.response_store import DAY_S, ResponseStore
from appliance.store import Store
from tests.conftest import LLM
from tests.hardening.conftest import admin, new_seat

pytestmark = pytest.mark.slow

WEATHER = {"type": "function", "name": "get_weather", "description": "Current weather in a city",
           "strict": True, "parameters": {
               "type": "object", "properties": {
                   "city": {"type": "string", "maxLength": 40},
                   "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
               "required": ["city", "unit"], "additionalProperties": False}}


class Colour(BaseModel):
    colour: str


def _post(box, key: str | None = None, **body) -> httpx.Response:
    return httpx.post(box.base_url + "/v1/responses", timeout=120,
                      headers={"Authorization": f"Bearer {key or box.api_key}"},
                      json={"model": LLM, "input": "Hi", "max_output_tokens": 4, **body})


def test_plain_text_and_instructions(client: openai.OpenAI) -> None:
    r = client.responses.create(model=LLM, input="Name a colour.", max_output_tokens=12,
                                temperature=0)
    assert r.id.startswith("resp_") and r.object == "response"
    assert r.status in ("completed", "incomplete") and r.output_text.strip()
    assert r.output[0].type == "message" and r.output[0].content[0].type == "output_text"
    assert r.usage is not None and r.usage.output_tokens > 0
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    if r.status == "incomplete":
        assert r.incomplete_details is not None
        assert r.incomplete_details.reason == "max_output_tokens"
    # instructions are the system message (SmolLM2's template has a default one otherwise)
    painter = "You are a painter. Answer in one word."
    told = client.responses.create(model=LLM, input="Name a colour.", max_output_tokens=4,
                                   temperature=0, store=False, instructions=painter)
    system = client.responses.create(model=LLM, max_output_tokens=4, temperature=0,
                                     store=False, input=[
                                         {"role": "system", "content": painter},
                                         {"role": "user", "content": "Name a colour."}])
    assert told.instructions == painter and system.instructions is None
    assert told.usage.input_tokens == system.usage.input_tokens != r.usage.input_tokens
    assert told.output_text == system.output_text


def test_streamed_events_assemble_into_the_final_text(client: openai.OpenAI) -> None:
    stream = client.responses.create(model=LLM, input="Say hello.", max_output_tokens=12,
                                     temperature=0, stream=True)
    events = list(stream)
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"]
    assert kinds[-4:-1] == ["response.output_text.done", "response.content_part.done",
                            "response.output_item.done"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text and text == events[-1].response.output_text
    assert events[-1].response.usage.output_tokens > 0
    # stored before the last event was sent: readable at once
    assert client.responses.retrieve(events[-1].response.id).output_text == text


def test_each_streamed_event_is_named_and_no_done_follows(box) -> None:
    r = _post(box, stream=True, store=False, max_output_tokens=2)
    blocks = [b for b in r.text.split("\n\n") if b.strip()]
    assert all(b.startswith("event: ") for b in blocks) and "[DONE]" not in r.text
    for block in blocks:
        name, data = block.split("\n", 1)
        assert json.loads(data.removeprefix("data: "))["type"] == name.removeprefix("event: ")


def test_structured_output_parses_streamed_or_not(client: openai.OpenAI) -> None:
    ask = "Pick a colour: red, green or blue. Answer in JSON."
    parsed = client.responses.parse(model=LLM, input=ask, text_format=Colour,
                                    max_output_tokens=32, temperature=0, store=False)
    assert parsed.status == "completed" and isinstance(parsed.output_parsed, Colour)
    with client.responses.stream(model=LLM, input=ask, text_format=Colour,
                                 max_output_tokens=32, temperature=0, store=False) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_response()
    assert "response.output_text.delta" in kinds and kinds[-1] == "response.completed"
    assert isinstance(final.output_parsed, Colour)
    assert final.text.format.type == "json_schema"


def test_a_function_tool_round_trip(client: openai.OpenAI) -> None:
    first = client.responses.create(model=LLM, input="What is the weather in Paris?",
                                    tools=[WEATHER], tool_choice="required",
                                    parallel_tool_calls=False, max_output_tokens=64,
                                    temperature=0)
    calls = [o for o in first.output if o.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert calls[0].call_id.startswith("call_") and calls[0].status == "completed"
    jsonschema.validate(json.loads(calls[0].arguments), WEATHER["parameters"])
    result = {"type": "function_call_output", "call_id": calls[0].call_id,
              "output": '{"temperature": 18, "unit": "celsius"}'}
    answer = client.responses.create(model=LLM, previous_response_id=first.id, input=[result],
                                     tools=[WEATHER], tool_choice="none",
                                     max_output_tokens=12, temperature=0)
    assert answer.output_text and answer.previous_response_id == first.id
    # the same conversation sent whole (the store: false way) reads the same prompt
    whole = client.responses.create(
        model=LLM, tools=[WEATHER], tool_choice="none", max_output_tokens=12, temperature=0,
        store=False, input=[{"role": "user", "content": "What is the weather in Paris?"},
                            calls[0].model_dump(exclude_none=True), result])
    assert whole.usage.input_tokens == answer.usage.input_tokens
    assert whole.output_text == answer.output_text


def test_streamed_function_call_arguments(client: openai.OpenAI) -> None:
    with client.responses.stream(model=LLM, input="Weather in Oslo?", tools=[WEATHER],
                                 tool_choice={"type": "function", "name": "get_weather"},
                                 parallel_tool_calls=False, max_output_tokens=64,
                                 temperature=0, store=False) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_response()
    assert "response.function_call_arguments.delta" in kinds
    assert kinds.count("response.function_call_arguments.done") == 1
    call = final.output[0]
    assert call.type == "function_call"
    jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])


def test_an_unanswered_call_id_is_refused(box) -> None:
    r = _post(box, input=[{"type": "function_call_output", "call_id": "call_x", "output": "1"}])
    assert r.status_code == 400 and "call_id 'call_x'" in r.json()["error"]["message"]


def test_previous_response_id_continues_the_conversation(client: openai.OpenAI) -> None:
    first = client.responses.create(model=LLM, input="My name is Ada. Say hi to me.",
                                    max_output_tokens=8, temperature=0)
    second = client.responses.create(model=LLM, previous_response_id=first.id,
                                     input="What is my name?", max_output_tokens=8,
                                     temperature=0)
    # the earlier turn (its input and output) is in the prompt: the same conversation sent
    # whole, the earlier output items as input (the store: false way), reads the same prompt
    whole = client.responses.create(
        model=LLM, max_output_tokens=8, temperature=0, store=False,
        input=[{"role": "user", "content": "My name is Ada. Say hi to me."},
               *(o.model_dump(exclude_none=True) for o in first.output),
               {"role": "user", "content": "What is my name?"}])
    assert second.usage.input_tokens == whole.usage.input_tokens
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    assert second.output_text == whole.output_text
    got = client.responses.retrieve(second.id)
    assert got.output_text == second.output_text and got.previous_response_id == first.id
    client.responses.delete(second.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(second.id)
    with pytest.raises(openai.NotFoundError):  # store: false keeps nothing
        client.responses.retrieve(whole.id)


def test_another_seat_cannot_read_or_continue_it(box, client: openai.OpenAI) -> None:
    mine = client.responses.create(model=LLM, input="A secret: 42.", max_output_tokens=2)
    seat_id, key = new_seat(box, "responses-other")
    try:
        other = openai.OpenAI(base_url=box.base_url + "/v1", api_key=key, max_retries=0)
        with pytest.raises(openai.NotFoundError):
            other.responses.retrieve(mine.id)
        with pytest.raises(openai.NotFoundError):
            other.responses.create(model=LLM, previous_response_id=mine.id, input="And?",
                                   max_output_tokens=2)
        with pytest.raises(openai.NotFoundError):
            other.responses.delete(mine.id)
        assert client.responses.retrieve(mine.id).id == mine.id
    finally:
        assert admin(box, "DELETE", f"/admin/seats/{seat_id}").status_code == 200


@pytest.mark.parametrize("body,named", [
    ({"reasoning": {"effort": "high"}}, "'reasoning'"),
    ({"tools": [{"type": "web_search"}]}, "tool type 'web_search'"),
    ({"tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}, "'file_search'"),
    ({"include": ["message.output_text.logprobs"]}, "'include'"),
    ({"input": [{"role": "user", "content": [
        {"type": "input_image", "image_url": "data:image/png;base64,AA=="}]}]},
     "part type 'input_image'"),
    ({"background": True}, "background"),
    ({"text": {"format": {"type": "json_schema", "schema": {"type": "object"}}}},
     "'name' and 'schema'"),
    ({"previous_response_id": "resp_nope"}, "resp_nope"),
    ({"input": "x" * (1 << 20)}, "responses_max_bytes"),  # the bound on what is stored
])
def test_unsupported_parameters_are_refused_by_name(box, body: dict, named: str) -> None:
    r = _post(box, **body)
    assert r.status_code in (400, 404), r.text
    assert named in r.json()["error"]["message"]


def test_reading_a_stored_response_takes_no_stream_or_include(box) -> None:
    auth = {"Authorization": f"Bearer {box.api_key}"}
    for query, named in (("stream=true", "'stream'"),
                         ("include[]=message.output_text.logprobs", "'include'")):
        r = httpx.get(f"{box.base_url}/v1/responses/resp_x?{query}", headers=auth, timeout=30)
        assert r.status_code == 400 and named in r.json()["error"]["message"]


def test_retention_cleanup_removes_an_expired_row(box, client: openai.OpenAI) -> None:
    r = client.responses.create(model=LLM, input="Remember this.", max_output_tokens=2)
    assert client.responses.retrieve(r.id).id == r.id
    store = Store(box.data_dir / "appliance.db")  # the box's own database, a second opener
    try:
        kept = ResponseStore(store, retention_days=30)
        assert kept.expire(now=time.time() + 29 * DAY_S) == 0
        assert kept.expire(now=time.time() + 31 * DAY_S) >= 1
    finally:
        store.close()
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)

"""Tool calling through a real box with the official clients (SmolLM2: the generic format,
so every call here is held to its schema by the grammar)."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel

from tests.conftest import LLM

pytestmark = pytest.mark.slow

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 40},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"], "additionalProperties": False}}}
ADD = {"type": "function", "function": {
    "name": "add", "description": "Add two integers",
    "parameters": {"type": "object", "properties": {"a": {"type": "integer"},
                                                    "b": {"type": "integer"}},
                   "required": ["a", "b"]}}}
TOOLS = [WEATHER, ADD]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def _valid_calls(message) -> list:
    assert message.tool_calls
    for call in message.tool_calls:
        assert call.id.startswith("call_") and call.type == "function"
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
    return message.tool_calls


@pytest.mark.parametrize("choice", ["required", {"type": "function",
                                                 "function": {"name": "add"}}])
def test_a_forced_call_is_valid(client: openai.OpenAI, choice) -> None:
    r = client.chat.completions.create(model=LLM, messages=ASK, tools=TOOLS, tool_choice=choice,
                                       parallel_tool_calls=False, max_tokens=128,
                                       temperature=0)
    message = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls" and message.content is None
    calls = _valid_calls(message)
    assert len(calls) == 1
    if isinstance(choice, dict):
        assert calls[0].function.name == "add"


def test_none_answers_in_text(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model=LLM, messages=ASK, tools=TOOLS, tool_choice="none",
                                       max_tokens=16, temperature=0)
    assert r.choices[0].message.content and not r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason in ("stop", "length")


def test_auto_answers_text_or_a_valid_call(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model=LLM, messages=ASK, tools=TOOLS, max_tokens=48,
                                       temperature=0)
    choice = r.choices[0]
    if choice.message.tool_calls:
        _valid_calls(choice.message)
    else:
        assert choice.message.content and choice.finish_reason in ("stop", "length")


def test_a_round_trip_with_the_tool_result(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(
        model=LLM, messages=ASK, tools=TOOLS, max_tokens=128, temperature=0,
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    call = _valid_calls(first.choices[0].message)[0]
    history = [*ASK, first.choices[0].message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 18}'}]
    assert history[1]["tool_calls"][0]["id"] == call.id and "content" not in history[1]
    answer = client.chat.completions.create(model=LLM, messages=history, tools=TOOLS,
                                            tool_choice="none", max_tokens=24, temperature=0)
    assert answer.choices[0].message.content
    again = client.chat.completions.create(model=LLM, messages=history, tools=TOOLS,
                                           tool_choice="required", max_tokens=128,
                                           temperature=0, parallel_tool_calls=False)
    _valid_calls(again.choices[0].message)


class Weather(BaseModel):
    city: str
    unit: str


def test_streamed_calls_assemble_in_the_client(client: openai.OpenAI) -> None:
    tool = openai.pydantic_function_tool(Weather, name="get_weather")  # strict schema
    with client.chat.completions.stream(model=LLM, messages=ASK, tools=[tool],
                                        tool_choice="required", parallel_tool_calls=False,
                                        max_tokens=128, temperature=0) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_completion()
    assert "tool_calls.function.arguments.delta" in kinds
    assert kinds.count("tool_calls.function.arguments.done") == 1
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    parsed = choice.message.tool_calls[0].function.parsed_arguments
    assert isinstance(parsed, Weather) and parsed.city


def _status(box, **body) -> httpx.Response:
    return httpx.post(box.base_url + "/v1/chat/completions", timeout=120,
                      headers={"Authorization": f"Bearer {box.api_key}"},
                      json={"model": LLM, "messages": ASK, "max_tokens": 8, **body})


@pytest.mark.parametrize("body,named", [
    ({"tools": [{"type": "function", "function": {"name": "bad name"}}]},
     "tools.0.function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "string", "maxLength": 100000}}}]}, "tools[0].function.parameters (f)"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice names function 'nope'"),
    ({"tools": [ADD, {"type": "function", "function": {"name": "broken", "parameters": {
        "type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}}}],
      "tool_choice": "required"}, "tools[1] (broken)"),
    ({"tools": [ADD] * 2}, "unique"),
    ({"tools": TOOLS, "response_format": {"type": "json_object"}}, "response_format"),
    ({"messages": [{"role": "tool", "content": "18"}]}, "tool_call_id"),
])
def test_bad_tools_are_refused_by_name(box, body, named) -> None:
    r = _status(box, **body)
    assert r.status_code == 400, r.text
    assert named in r.json()["error"]["message"]


def test_langchain_bind_tools_and_structured_output(box) -> None:
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(model=LLM, base_url=box.base_url + "/v1", api_key=box.api_key,
                      temperature=0, max_tokens=128, max_retries=0)
    reply = chat.bind_tools([Weather], tool_choice="Weather", parallel_tool_calls=False).invoke(
        "What is the weather in Paris?")
    assert [c["name"] for c in reply.tool_calls] == ["Weather"]
    Weather.model_validate(reply.tool_calls[0]["args"])
    structured = chat.with_structured_output(Weather, method="function_calling")
    assert isinstance(structured.invoke("Weather in Rome, in celsius?"), Weather)

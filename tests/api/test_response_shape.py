"""The Response object and its events (pure), validated against the ``openai`` package's
own types: every event and the final object parse strictly, the client's stream state
assembles the same answer, text between calls opens new messages, whitespace alone none."""

from __future__ import annotations

import json

import pydantic
import pytest
from openai import omit
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent

from appliance.api.response_shape import ResponseShape
from appliance.api.responses_schemas import ResponseRequest
from appliance.api.tool_answers import DeltaStream
from engines.llm.toolparse import CallParser
from engines.llm.tools import GENERIC
from engines.types import Finished, GenerationEvent, TextDelta

EVENTS = pydantic.TypeAdapter(ResponseStreamEvent)
ADD = {"type": "function", "name": "add", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}}


def run(body: dict, deltas: list[str], finish: str = "stop", tools: bool = False
        ) -> tuple[ResponseShape, list[dict]]:
    request = ResponseRequest.model_validate({"model": "m", "input": "hi", **body})
    calls = DeltaStream(CallParser(GENERIC, ["add"])) if tools else None
    shape = ResponseShape(request.echo(), calls)
    feed: list[GenerationEvent] = [TextDelta(d, 1) for d in deltas]
    feed.append(Finished(finish, 7, len(deltas), 3))
    events = [e for ev in feed for e in shape.feed(0, ev)] + shape.final_events()
    for e in events:
        EVENTS.validate_python(e)  # strict: every field the client's types require
    return shape, events


def assembled(events: list[dict]) -> Response:
    """The answer the official client's stream state builds from the events."""
    state: ResponseStreamState = ResponseStreamState(input_tools=[ADD], text_format=omit)
    for e in events:
        state.handle_event(EVENTS.validate_python(e))
    assert state._completed_response is not None
    return state._completed_response


def test_text_streams_in_the_order_the_client_expects() -> None:
    shape, events = run({"instructions": "Be brief.", "metadata": {"k": "v"}},
                        [" ", "Hello", ",", " world"])
    kinds = [e["type"] for e in events]
    assert kinds == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added"] + ["response.output_text.delta"] * 3 + [
        "response.output_text.done", "response.content_part.done",
        "response.output_item.done", "response.completed"]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    final = Response.model_validate(shape.answer())
    assert final.output_text == " Hello, world" and final.status == "completed"
    assert final.instructions == "Be brief." and final.metadata == {"k": "v"}
    assert final.usage is not None and final.usage.input_tokens == 7
    assert final.usage.input_tokens_details.cached_tokens == 3
    assert assembled(events).output_text == final.output_text


def test_a_cut_answer_is_incomplete() -> None:
    shape, events = run({"max_output_tokens": 2}, ["One", " two"], finish="length")
    assert events[-1]["type"] == "response.incomplete"
    final = Response.model_validate(shape.answer())
    assert final.status == "incomplete"
    assert final.incomplete_details is not None
    assert final.incomplete_details.reason == "max_output_tokens"
    assert final.output[0].status == "incomplete"  # type: ignore[union-attr]


def test_text_and_calls_become_items_of_their_own() -> None:
    call = '<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>'
    shape, events = run({"tools": [ADD]}, ["Adding.", "\n", call[:20], call[20:], "\n", call,
                                           "\n"], tools=True)
    final = Response.model_validate(shape.answer())
    kinds = [o.type for o in final.output]
    assert kinds == ["message", "function_call", "function_call"]  # no message of "\n"
    calls = [o for o in final.output if o.type == "function_call"]
    assert [json.loads(c.arguments) for c in calls] == [{"a": 1, "b": 2}] * 2
    assert all(c.call_id.startswith("call_") and c.id.startswith("fc_") for c in calls)
    done = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert [e["arguments"] for e in done] == [c.arguments for c in calls]
    client = assembled(events)
    assert [o.type for o in client.output] == kinds
    assert client.output[1].arguments == calls[0].arguments  # type: ignore[union-attr]


def test_an_empty_answer_is_an_empty_message() -> None:
    shape, _ = run({}, [])
    final = Response.model_validate(shape.answer())
    assert [o.type for o in final.output] == ["message"] and final.output_text == ""


@pytest.mark.parametrize("body,named", [
    ({"reasoning": {"effort": "low"}}, "'reasoning'"),
    ({"tools": [{"type": "web_search"}]}, "tool type 'web_search'"),
    ({"include": ["file_search_call.results"]}, "'include'"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
     "input[0]: Value error, content[0]: part type 'input_image'"),
    ({"input": [{"type": "reasoning", "summary": []}]}, "input item type 'reasoning'"),
    ({"truncation": "auto"}, "'truncation'"),
    ({"text": {"verbosity": "low"}}, "'text.verbosity'"),
    ({"frobnicate": 1}, "'frobnicate'"),
    ({"tool_choice": {"type": "file_search"}}, "tool_choice type 'file_search'"),
    ({"tools": [ADD], "text": {"format": {"type": "json_object"}}}, "text.format with tools"),
])
def test_what_changes_meaning_is_refused_by_name(body: dict, named: str) -> None:
    with pytest.raises(pydantic.ValidationError) as exc:
        ResponseRequest.model_validate({"model": "m", "input": "hi", **body})
    assert named in str(exc.value)


def test_no_op_values_and_nulls_pass() -> None:
    ResponseRequest.model_validate({
        "model": "m", "input": "hi", "reasoning": {"effort": None}, "include": [],
        "truncation": "disabled", "background": False, "temperature": None, "top_p": None,
        "service_tier": "auto", "stream_options": {"include_obfuscation": False}})

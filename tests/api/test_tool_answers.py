"""Tool-call answers in OpenAI's shapes, assembled by the official client's own stream
accumulator (no server: the shapes alone)."""

from __future__ import annotations

import json

import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk

from appliance.api.tool_answers import DeltaStream, finish_reason, message
from engines.llm.toolparse import CallParser, parse
from engines.llm.tools import GENERIC

ANSWER = ('Checking.<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}'
          '</tool_call>\n<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>')
NAMES = ["get_weather", "add"]


def _chunk(delta: dict, finish: str | None = None) -> ChatCompletionChunk:
    return ChatCompletionChunk.model_validate({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


@pytest.mark.parametrize("step", [1, 5, 1000])
def test_the_openai_client_assembles_streamed_calls(step: int) -> None:
    stream = DeltaStream(CallParser(GENERIC, NAMES))
    state = ChatCompletionStreamState()
    state.handle_chunk(_chunk({"role": "assistant", "content": ""}))
    for i in range(0, len(ANSWER), step):
        for delta in stream.feed(ANSWER[i:i + step]):
            state.handle_chunk(_chunk(delta))
    for delta in stream.close():
        state.handle_chunk(_chunk(delta))
    state.handle_chunk(_chunk({}, finish_reason("stop", stream.called)))
    choice = state.get_final_completion().choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Checking."
    calls = choice.message.tool_calls
    assert [c.function.name for c in calls] == NAMES
    assert [json.loads(c.function.arguments) for c in calls] == [{"city": "Paris"},
                                                                {"a": 1, "b": 2}]
    assert all(c.id.startswith("call_") and c.type == "function" for c in calls)
    whole = stream.answer()  # the non-streamed answer is the same
    assert [(n, a) for _, n, a in whole.calls] == [(c.function.name, c.function.arguments)
                                                   for c in calls]


def test_whole_answer_message() -> None:
    only_calls = message(parse(ANSWER[len("Checking."):], GENERIC, NAMES))
    assert only_calls["content"] is None and len(only_calls["tool_calls"]) == 2
    assert "tool_calls" not in message(parse("plain", GENERIC, NAMES))
    assert finish_reason("length", True) == "length"
    assert finish_reason("stop", False) == "stop"


def _request(**body):
    from appliance.api.openai_schemas import ChatCompletionRequest

    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], **body})


TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


def test_tool_choice_defaults_and_named_choice() -> None:
    assert _request().choice().mode == "none"
    assert _request(tools=[TOOL]).choice().mode == "auto"
    named = _request(tools=[TOOL], tool_choice={"type": "function", "function": {"name": "f"}})
    assert (named.choice().mode, named.choice().name) == ("required", "f")
    history = _request(messages=[
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"}])
    assert [m.rendered() for m in history.messages] == [
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "content": "42", "tool_call_id": "c1"}]


@pytest.mark.parametrize("body,named", [
    ({"tools": [TOOL] * 129}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "f", "description": "x" * 9000}}]},
     "description"),
    ({"tools": [{"type": "function", "function": {"name": f"f{i}", "parameters": {
        "type": "object", "description": "x" * 60000}}} for i in range(5)]}, "bytes"),
    ({"tool_choice": "required"}, "needs at least one function"),
    ({"messages": [{"role": "user", "content": "x", "tool_calls": []}],
      "tools": [TOOL]}, None),
])
def test_tool_bounds_are_checked_before_any_engine(body, named) -> None:
    import pydantic

    if named is None:
        _request(**body)  # an empty tool_calls list is no call
        return
    with pytest.raises(pydantic.ValidationError, match=named):
        _request(**body)

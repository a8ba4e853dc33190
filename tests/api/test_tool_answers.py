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

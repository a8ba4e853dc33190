"""Chat answers that call tools, in OpenAI's shapes (pure).

Non-streamed: ``message.tool_calls`` (``call_...`` ids, ``type: function``, the function's
name and its arguments as a JSON string), ``content`` null when the answer is only calls.
Streamed: ``delta.tool_calls`` chunks, each call's index, id and name first, then its
arguments in fragments, which the ``openai`` client assembles. Either way a generation
that ended naturally after a call finishes with ``finish_reason: "tool_calls"``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from appliance.api.openai_schemas import ChatCompletionRequest
from engines.base import LLMEngine
from engines.llm.toolparse import (
    CallArgs,
    CallParser,
    CallStart,
    Content,
    Event,
    ParsedAnswer,
    fold,
)
from engines.llm.toolplan import plan_tools
from engines.types import Sampling


def message(answer: ParsedAnswer) -> dict[str, Any]:
    """The assistant message of a whole answer."""
    out: dict[str, Any] = {"role": "assistant", "content": answer.content}
    if answer.calls:
        out["tool_calls"] = [{"id": ident, "type": "function",
                              "function": {"name": name, "arguments": arguments}}
                             for ident, name, arguments in answer.calls]
    return out


def finish_reason(reason: str, called: bool) -> str:
    """``tool_calls`` for an answer that ended by itself after calling."""
    return "tool_calls" if called and reason == "stop" else reason


class DeltaStream:
    """Text deltas in, ``delta`` objects of chat.completion.chunk out."""

    def __init__(self, parser: CallParser, *, forced: bool = False) -> None:
        self.parser = parser
        self.forced = forced  # the grammar admits only calls: the answer has no text
        self.called = False
        self._events: list[Event] = []

    def feed(self, text: str) -> list[dict[str, Any]]:
        return self._deltas(self.parser.feed(text))

    def close(self) -> list[dict[str, Any]]:
        return self._deltas(self.parser.close())

    def answer(self) -> ParsedAnswer:
        """Everything streamed so far, as one answer (for a non-streamed response)."""
        return fold(self._events)

    def _deltas(self, events: list[Event]) -> list[dict[str, Any]]:
        self._events += events
        out: list[dict[str, Any]] = []
        for e in events:
            last = out[-1] if out else None
            if isinstance(e, Content):
                if last is not None and "content" in last:
                    last["content"] += e.text
                else:
                    out.append({"content": e.text})
            elif isinstance(e, CallStart):
                self.called = True
                out.append({"tool_calls": [{"index": e.index, "id": e.id, "type": "function",
                                            "function": {"name": e.name, "arguments": ""}}]})
            elif isinstance(e, CallArgs):
                call = last["tool_calls"][0] if last and "tool_calls" in last else None
                if call is not None and call["index"] == e.index and "id" not in call:
                    call["function"]["arguments"] += e.fragment
                else:
                    out.append({"tool_calls": [{"index": e.index,
                                                "function": {"arguments": e.fragment}}]})
        return out


@dataclass(frozen=True)
class ChatPrompt:
    """A chat request made ready for the engine."""

    tokens: list[int]
    grammar: str | None
    triggers: tuple[str, ...]
    calls: Callable[[], DeltaStream] | None  # a call reader per choice; None: no calls

    def sampling(self, base: Sampling) -> Sampling:
        return replace(base, grammar=self.grammar, grammar_triggers=self.triggers)


def uses_tools(body: ChatCompletionRequest) -> bool:
    """Whether the request offers tools or its history holds calls or results."""
    return bool(body.tools) or any(m.tool_calls or m.role == "tool" for m in body.messages)


def chat_prompt(engine: LLMEngine, body: ChatCompletionRequest,
                messages: list[dict[str, Any]], response_grammar: str | None,
                image_marker: str | None = None) -> ChatPrompt:
    """Tokens, grammar and call reader of a chat request (blocking: call off the loop).

    Without tools this is the plain chat prompt with ``response_format``'s grammar. With
    tools, a forced call's grammar wins (a call has no text to shape); under ``none`` the
    text is shaped by ``response_format``; under ``auto`` the schema refused the pair.
    ``image_marker``: where the messages hold images (``LLMEngine.vision_chat_tokens``)."""
    if not uses_tools(body):
        tokens = (engine.chat_tokens(messages) if image_marker is None
                  else engine.vision_chat_tokens(messages, None, image_marker))
        return ChatPrompt(tokens, response_grammar, (), None)
    plan = plan_tools(engine, messages, body.tool_specs(), body.choice(),
                      parallel=body.parallel_tool_calls is not False, image_marker=image_marker)
    forced = plan.grammar is not None and not plan.triggers

    def reader() -> DeltaStream:
        parser = plan.parser()
        assert parser is not None
        return DeltaStream(parser, forced=forced)

    return ChatPrompt(plan.tokens, plan.grammar or response_grammar, plan.triggers,
                      reader if plan.parser() is not None else None)

"""The Response object of ``/v1/responses`` and its server-sent events (pure).

One generation becomes a list of output items: ``message`` items (one ``output_text``
part each) for text, ``function_call`` items for calls the model made (read from its text
by the chat route's call parser, so the grammar that forces calls serves both APIs). Text
between calls opens a new message; whitespace alone never does. The same events build
the streamed answer (``feed``: ``response.created``, ``response.in_progress``, then per
item ``output_item.added``, ``content_part.added``, ``output_text.delta``... or
``function_call_arguments.delta``..., each closed by its ``.done`` events) and the whole
one (``answer``), so both agree. Every event carries its ``sequence_number``.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from appliance.api.tool_answers import DeltaStream
from engines.llm.toolparse import CallArgs, CallParser, CallStart, Content, Event
from engines.types import Finished, GenerationEvent, TextDelta


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


@dataclass
class _Message:
    id: str = field(default_factory=lambda: new_id("msg"))
    text: str = ""
    status: str = "in_progress"

    def part(self) -> dict[str, Any]:
        return {"type": "output_text", "text": self.text, "annotations": [], "logprobs": []}

    def item(self, content: bool = True) -> dict[str, Any]:
        return {"id": self.id, "type": "message", "role": "assistant", "status": self.status,
                "content": [self.part()] if content else []}


@dataclass
class _Call:
    call_id: str
    name: str
    id: str = field(default_factory=lambda: new_id("fc"))
    arguments: str = ""
    status: str = "in_progress"

    def item(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function_call", "status": self.status,
                "call_id": self.call_id, "name": self.name, "arguments": self.arguments}


class ResponseShape:
    """A Response and its events for one generation; ``echo`` holds the request's
    settings the object repeats, ``calls`` reads tool calls out of the text (None: no
    tools)."""

    def __init__(self, echo: dict[str, Any], calls: DeltaStream | None = None) -> None:
        self.echo = echo
        self.parser: CallParser | None = calls.parser if calls is not None else None
        self.id = new_id("resp")
        self.created_at = int(time.time())
        self.completed_at: int | None = None
        self.status = "in_progress"
        self.output: list[_Message | _Call] = []
        self.usage: dict[str, Any] | None = None
        self._seq = 0
        self._open: _Message | _Call | None = None
        self._calls: dict[int, _Call] = {}  # the parser's call index -> its item
        self._held = ""  # whitespace that opens no message by itself
        self._started = False

    # ------------------------------------------------------------------ the object
    def response(self) -> dict[str, Any]:
        """The Response object as it stands."""
        incomplete = ({"reason": "max_output_tokens"} if self.status == "incomplete"
                      else None)
        return {"id": self.id, "object": "response", "created_at": self.created_at,
                "status": self.status, "completed_at": self.completed_at, "error": None,
                "incomplete_details": incomplete,
                "output": [o.item() for o in self.output], "usage": self.usage,
                **self.echo}

    def answer(self) -> dict[str, Any]:
        """The whole Response, once the generation was fed to its end."""
        return self.response()

    def final_events(self) -> list[dict[str, Any]]:
        """``response.completed`` (or ``response.incomplete``) with the whole Response."""
        kind = "response.incomplete" if self.status == "incomplete" else "response.completed"
        return [self._event(kind, response=self.response())]

    def usage_chunk(self) -> dict[str, Any]:
        """The closing event (a Responses stream always carries usage in it)."""
        return self.final_events()[0]

    # ------------------------------------------------------------------ events
    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return event

    def feed(self, index: int, event: GenerationEvent) -> list[dict[str, Any]]:
        """The events ``event`` of the (only) generation makes, in order."""
        out: list[dict[str, Any]] = []
        if not self._started:
            self._started = True
            out.append(self._event("response.created", response=self.response()))
            out.append(self._event("response.in_progress", response=self.response()))
        if isinstance(event, TextDelta) and event.text:
            parsed = (self.parser.feed(event.text) if self.parser is not None
                      else [Content(event.text)])
            for e in parsed:
                out += self._on(e)
        elif isinstance(event, Finished):
            for e in self.parser.close() if self.parser is not None else ():
                out += self._on(e)
            if not self.output:  # an empty answer (or whitespace only) is still a message
                out += self._on(Content(""), opens=True)
            self._held = ""
            cut = event.finish_reason == "length"
            out += self._close("incomplete" if cut else "completed")
            self.status = "incomplete" if cut else "completed"
            self.completed_at = int(time.time())
            self.usage = usage(event.prompt_tokens, event.completion_tokens,
                               event.cached_tokens)
        return out

    def _on(self, e: Event, opens: bool = False) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if isinstance(e, Content):
            if not isinstance(self._open, _Message):
                if not opens and (e.text.isspace() or not e.text):
                    self._held += e.text
                    return out
                out += self._close("completed")
                out += self._add(_Message())
            text, self._held = self._held + e.text, ""
            msg = self._open
            assert isinstance(msg, _Message)
            msg.text += text
            if text:
                out.append(self._event("response.output_text.delta", item_id=msg.id,
                                       output_index=len(self.output) - 1, content_index=0,
                                       delta=text, logprobs=[]))
        elif isinstance(e, CallStart):
            self._held = ""
            out += self._close("completed")
            call = _Call(e.id, e.name)
            self._calls[e.index] = call
            out += self._add(call)
        elif isinstance(e, CallArgs):
            call = self._calls[e.index]
            call.arguments += e.fragment
            out.append(self._event("response.function_call_arguments.delta", item_id=call.id,
                                   output_index=self.output.index(call), delta=e.fragment))
        return out

    def _add(self, item: _Message | _Call) -> list[dict[str, Any]]:
        self.output.append(item)
        self._open = item
        at = len(self.output) - 1
        if isinstance(item, _Call):
            return [self._event("response.output_item.added", output_index=at,
                                item=item.item())]
        part = item.part()
        return [self._event("response.output_item.added", output_index=at,
                            item=item.item(content=False)),
                self._event("response.content_part.added", item_id=item.id, output_index=at,
                            content_index=0, part=part)]

    def _close(self, status: str) -> list[dict[str, Any]]:
        item, self._open = self._open, None
        if item is None:
            return []
        item.status = status
        at = self.output.index(item)
        if isinstance(item, _Call):
            return [self._event("response.function_call_arguments.done", item_id=item.id,
                                output_index=at, arguments=item.arguments),
                    self._event("response.output_item.done", output_index=at,
                                item=item.item())]
        return [self._event("response.output_text.done", item_id=item.id, output_index=at,
                            content_index=0, text=item.text, logprobs=[]),
                self._event("response.content_part.done", item_id=item.id, output_index=at,
                            content_index=0, part=item.part()),
                self._event("response.output_item.done", output_index=at, item=item.item())]


def usage(prompt: int, completion: int, cached: int) -> dict[str, Any]:
    """The Responses ``usage`` object."""
    return {"input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
            "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + completion}

"""Read tool calls out of a model's answer as it streams (pure).

``CallParser`` is fed text deltas and returns events: ``Content`` (plain text to show),
``CallStart`` (a call's index, id and function name) and ``CallArgs`` (the next fragment
of its arguments, a JSON text). The arguments stream as the model writes them when the
name comes first (as the grammar writes calls); otherwise a call is emitted whole once it
has ended. A non-streamed answer is the same events folded (``parse``), so both agree.
Text that looks like a call but does not parse stays content: nothing is dropped.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from engines.llm.tools import CallFormat


@dataclass(frozen=True)
class Content:
    text: str


@dataclass(frozen=True)
class CallStart:
    index: int
    id: str
    name: str


@dataclass(frozen=True)
class CallArgs:
    index: int
    fragment: str


Event = Content | CallStart | CallArgs

_PYTHON_TAG = "<|python_tag|>"


def new_call_id() -> str:
    """An id in OpenAI's shape: ``call_`` and 24 random characters."""
    return "call_" + secrets.token_hex(12)


class _Scanner:
    """Finds where one JSON value ends in text that arrives piece by piece."""

    def __init__(self) -> None:
        self.depth = 0
        self.in_string = False
        self.escape = False

    def feed(self, text: str) -> int:
        """Characters of ``text`` up to the end of the value (-1: not ended yet)."""
        for i, c in enumerate(text):
            if self.in_string:
                if self.escape:
                    self.escape = False
                elif c == "\\":
                    self.escape = True
                elif c == '"':
                    self.in_string = False
                    if self.depth == 0:
                        return i + 1
            elif c == '"':
                self.in_string = True
            elif c in "{[":
                self.depth += 1
            elif c in "}]":
                self.depth -= 1
                if self.depth <= 0:
                    return i + 1
        return -1


@dataclass(eq=False)
class _Call:
    buffer: str = ""  # the call's text seen so far (after the open tag)
    index: int = -1  # set once CallStart was emitted
    args: _Scanner | None = None  # streaming the arguments
    args_done: bool = False
    tail: str = ""  # text after the arguments (the closing brace and tag)


class CallParser:
    """Incremental parser of one answer in ``fmt`` (see the module docstring)."""

    def __init__(self, fmt: CallFormat, names: Sequence[str],
                 new_id: Callable[[], str] = new_call_id) -> None:
        self.fmt = fmt
        self.names = set(names)
        self.new_id = new_id
        self.calls = 0
        self._pending = ""  # text not yet classified
        self._call: _Call | None = None
        self._decided = bool(fmt.open_tag)  # bare-object formats decide at the start
        self._bare = False
        self._head = re.compile(r'\s*\{\s*"name"\s*:\s*"([A-Za-z0-9_-]{1,64})"\s*,\s*"'
                                + re.escape(fmt.args_key) + r'"\s*:\s*(?=\{)')

    # ------------------------------------------------------------------ feeding
    def feed(self, text: str) -> list[Event]:
        self._pending += text
        out: list[Event] = []
        while self._pending:
            before = (self._pending, self._call, self._decided)
            if self._call is not None:
                self._in_call(out)
            elif not self._decided:
                self._decide()
            elif self._bare:
                out.append(Content(self._pending))
                self._pending = ""
            else:
                self._in_text(out)
            if (self._pending, self._call, self._decided) == before:
                break  # waiting for more text
        return [e for e in out if not (isinstance(e, Content) and not e.text)]

    def close(self) -> list[Event]:
        """Events for what is left when the answer ends (a call cut short stays text
        unless its start was already sent)."""
        out: list[Event] = []
        call, self._call = self._call, None
        if call is not None and call.index < 0 and not self._whole(call.buffer, out):
            out.append(Content(self.fmt.open_tag + call.buffer))
        if self._pending and not (self.calls and self._pending.isspace()):
            out.append(Content(self._pending))
        self._pending = ""
        return [e for e in out if not (isinstance(e, Content) and not e.text)]

    # ------------------------------------------------------------------ states
    def _decide(self) -> None:
        """Bare-object formats: an answer is a call when it starts with ``{``."""
        stripped = self._pending.lstrip()
        if stripped.startswith(_PYTHON_TAG):
            body = stripped[len(_PYTHON_TAG):].lstrip()
        elif _PYTHON_TAG.startswith(stripped):  # nothing yet, or the tag's beginning
            return
        else:
            body = stripped
        if not body:
            return
        self._decided = True
        if body.startswith("{"):
            self._call = _Call()
            self._pending = body
        else:
            self._bare = True

    def _in_text(self, out: list[Event]) -> None:
        tag = self.fmt.open_tag
        if self.calls:  # whitespace between calls is not content
            stripped = self._pending.lstrip()
            if not stripped or tag.startswith(stripped[:len(tag)]):
                self._pending = stripped
        at = self._pending.find(tag)
        if at >= 0:
            if at:
                out.append(Content(self._pending[:at]))
            self._pending = self._pending[at + len(tag):]
            self._call = _Call()
            return
        keep = 0  # hold back what may be the start of the tag
        for k in range(min(len(tag) - 1, len(self._pending)), 0, -1):
            if self._pending.endswith(tag[:k]):
                keep = k
                break
        cut = len(self._pending) - keep
        if cut:
            out.append(Content(self._pending[:cut]))
            self._pending = self._pending[cut:]

    def _in_call(self, out: list[Event]) -> None:
        call = self._call
        assert call is not None
        text, self._pending = self._pending, ""
        if call.index < 0:
            call.buffer += text
            m = self._head.match(call.buffer)
            if m and m.group(1) in self.names:  # arguments are an object: stream them
                call.index = self.calls
                self.calls += 1
                out.append(CallStart(call.index, self.new_id(), m.group(1)))
                call.args = _Scanner()
                text = call.buffer[m.end():]
            else:
                self._end_of_unstreamed(call, out)
                return
        if not call.args_done:
            assert call.args is not None
            end = call.args.feed(text)
            if end < 0:
                if text:
                    out.append(CallArgs(call.index, text))
                return
            if end:
                out.append(CallArgs(call.index, text[:end]))
            call.args_done = True
            text = text[end:]
        call.tail += text
        self._end_of_streamed(call)

    def _end_of_streamed(self, call: _Call) -> None:
        """After the arguments: the call's closing brace, then the close tag."""
        close = self.fmt.close_tag
        if not close:
            brace = call.tail.find("}")
            if brace >= 0:
                self._pending = call.tail[brace + 1:]
                self._call = None
                self._bare = True  # one bare call per answer; anything after is text
            return
        at = call.tail.find(close)
        if at >= 0:
            self._pending = call.tail[at + len(close):]
            self._call = None

    def _end_of_unstreamed(self, call: _Call, out: list[Event]) -> None:
        """A call whose name does not come first: wait for its end, then parse it whole."""
        close = self.fmt.close_tag
        if close:
            at = call.buffer.find(close)
            if at < 0:
                return
            body, self._pending = call.buffer[:at], call.buffer[at + len(close):]
        else:
            end = _value_end(call.buffer)
            if end < 0:
                return
            body, self._pending = call.buffer[:end], call.buffer[end:]
            self._bare = True
        self._call = None
        if not self._whole(body, out):
            out.append(Content(self.fmt.open_tag + body + close))

    def _whole(self, body: str, out: list[Event]) -> bool:
        """Emit ``body`` as one call if it parses as one; False if it does not."""
        try:
            obj = json.loads(body)
        except ValueError:
            return False
        if not isinstance(obj, dict) or obj.get("name") not in self.names:
            return False
        args = obj.get(self.fmt.args_key, obj.get("arguments", obj.get("parameters", {})))
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except ValueError:
                return False
        if not isinstance(args, dict):
            return False
        index = self.calls
        self.calls += 1
        out.append(CallStart(index, self.new_id(), obj["name"]))
        out.append(CallArgs(index, json.dumps(args, ensure_ascii=False)))
        return True


def _value_end(text: str) -> int:
    """Characters up to the end of the first JSON value in ``text`` (-1: not ended)."""
    return _Scanner().feed(text)


@dataclass
class ParsedAnswer:
    """A whole answer: its text (None when empty) and its calls (id, name, arguments)."""

    content: str | None
    calls: list[tuple[str, str, str]]


def fold(events: Sequence[Event]) -> ParsedAnswer:
    """The answer the events describe."""
    text = "".join(e.text for e in events if isinstance(e, Content))
    calls: dict[int, list[str]] = {}
    for e in events:
        if isinstance(e, CallStart):
            calls[e.index] = [e.id, e.name, ""]
        elif isinstance(e, CallArgs):
            calls[e.index][2] += e.fragment
    content = text if text.strip() or not calls else None
    return ParsedAnswer(content, [tuple(c) for _, c in sorted(calls.items())])  # type: ignore[misc]


def parse(text: str, fmt: CallFormat, names: Sequence[str],
          new_id: Callable[[], str] = new_call_id) -> ParsedAnswer:
    """The calls in a whole answer (what streaming it would have produced)."""
    parser = CallParser(fmt, names, new_id)
    return fold(parser.feed(text) + parser.close())

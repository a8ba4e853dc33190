"""The body of ``POST /v1/responses`` (the part of OpenAI's Responses API the box honours)
and its translation into the chat request the chat route runs.

Input items: messages (roles user, system, developer, assistant; text parts), a
``function_call`` the model made and the ``function_call_output`` that answers it. Tools
are functions in the Responses' flat shape. Everything else that would change the answer
(built-in tools, ``reasoning``, ``include`` entries, image and file parts, ...) is a 400
naming it; parameters that cannot change the answer are listed in ``NO_EFFECT``.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from appliance.api.openai_schemas import (
    MAX_DESCRIPTION,
    MAX_TOOLS,
    MAX_TOOLS_BYTES,
    ChatCompletionRequest,
    _Body,
)
from engines.errors import InvalidRequestError

MAX_INPUT_ITEMS = 4096  # items in one request's input (history from the store aside)
MAX_METADATA = 16  # OpenAI's bounds on metadata: pairs, key and value lengths
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512

# Parameters of OpenAI's request schema that cannot change the answer: accepted, no effect.
NO_EFFECT = frozenset({"safety_identifier", "prompt_cache_key", "service_tier",
                       "prompt_cache_retention", "stream_options"})
# Parameters the box refuses unless they hold their no-op value (null, false, [], {}).
REFUSED = {
    "background": "background responses are not supported by this box",
    "conversation": "'conversation' (the Conversations API) is not supported by this box; "
                    "continue with 'previous_response_id'",
    "prompt": "stored prompt templates ('prompt') are not supported by this box",
    "context_management": "'context_management' (compaction) is not supported by this box",
    "moderation": "'moderation' is not supported by this box",
    "image": "'image' options are not supported by this box",
    "access_programs": "'access_programs' is not supported by this box",
    "background_options": "background responses are not supported by this box",
    "prompt_cache_options": "'prompt_cache_options' is not supported by this box (prompt "
                            "prefixes are reused automatically)",
    "max_tool_calls": "'max_tool_calls' is not supported by this box; use "
                      "'parallel_tool_calls': false for at most one call",
    "top_logprobs": "'top_logprobs' is not supported on /v1/responses by this box; use "
                    "/v1/chat/completions",
    "reasoning": "'reasoning' is not supported: the box's models do not reason in a "
                 "separate channel",
    "include": "'include' entries are not supported by this box",
    "truncation": "'truncation' 'auto' is not supported: the box never drops input items; "
                  "a conversation longer than the context is a 400",
    "tool_resources": "'tool_resources' is not supported by this box",
}


def _no_op(name: str, value: Any) -> bool:
    """Whether ``value`` of the refusable ``name`` asks for nothing."""
    if value is None or value is False or value == [] or value == {}:
        return True
    if name == "truncation":
        return value == "disabled"
    if name == "top_logprobs":
        return value == 0
    if name == "reasoning" and isinstance(value, dict):
        return all(v is None for v in value.values())
    return False


def _why(name: str, value: Any) -> str:
    why = REFUSED[name]
    if name == "include":
        return f"'include' entries {value!r} are not supported by this box"
    return why


def _errors(exc: ValidationError, where: str) -> str:
    """A nested model's validation errors, located under ``where``."""
    return "; ".join(
        f"{where}{''.join(f'[{p}]' if isinstance(p, int) else f'.{p}' for p in e['loc'])}: "
        f"{e['msg']}" for e in exc.errors())


class Part(_Body):
    """A content part: ``input_text``, ``output_text`` or ``refusal`` (other kinds: 400)."""

    type: str
    text: str | None = None
    refusal: str | None = None


TEXT_PARTS = {"user": ("input_text",), "system": ("input_text",),
              "developer": ("input_text",), "assistant": ("output_text", "refusal", "input_text")}


def _check_parts(content: str | list[Part], allowed: tuple[str, ...], field: str) -> None:
    """ValueError naming the first part of a kind ``allowed`` does not hold."""
    for j, p in enumerate([] if isinstance(content, str) else content):
        if p.type not in allowed:
            kind = next((k for k in ("image", "file", "audio") if k in p.type), None)
            note = (f" ({kind} input needs a model this box's Responses API does not serve)"
                    if kind else "")
            raise ValueError(f"{field}[{j}]: part type {p.type!r} is not supported here; "
                             f"use {' or '.join(repr(a) for a in allowed)}{note}")


def _text(content: str | list[Part]) -> str:
    if isinstance(content, str):
        return content
    return "".join((p.refusal if p.type == "refusal" else p.text) or "" for p in content)


class MessageItem(_Body):
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[Part]

    @model_validator(mode="after")
    def _parts(self) -> MessageItem:
        _check_parts(self.content, TEXT_PARTS[self.role], "content")
        return self

    def chat(self) -> dict[str, Any]:
        return {"role": self.role, "content": _text(self.content)}


class FunctionCallItem(_Body):
    type: Literal["function_call"]
    call_id: str = Field(min_length=1, max_length=128)
    name: str = Field(min_length=1, max_length=64)
    arguments: str = Field(max_length=MAX_TOOLS_BYTES)


class FunctionCallOutputItem(_Body):
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1, max_length=128)
    output: str | list[Part]

    @model_validator(mode="after")
    def _parts(self) -> FunctionCallOutputItem:
        _check_parts(self.output, ("input_text", "output_text"), "output")
        return self


Item = MessageItem | FunctionCallItem | FunctionCallOutputItem
ITEM_TYPES: dict[str, type[Item]] = {"message": MessageItem, "function_call": FunctionCallItem,
                                     "function_call_output": FunctionCallOutputItem}


def parse_item(raw: Any, where: str) -> Item:
    """One input item (a dict; a message when it names no type); ValueError naming it."""
    if isinstance(raw, Item):
        return raw
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: an input item is an object")
    kind = raw.get("type") or "message"
    cls = ITEM_TYPES.get(kind)
    if cls is None:
        raise ValueError(f"{where}: input item type {kind!r} is not supported by this box; "
                         f"send {', '.join(repr(k) for k in ITEM_TYPES)} items")
    try:
        return cls.model_validate(raw)
    except ValidationError as exc:
        raise ValueError(_errors(exc, where)) from None


def dump_item(item: Item) -> dict[str, Any]:
    """The item as stored (and as OpenAI's input item shape)."""
    out = item.model_dump(exclude_none=True, by_alias=True)
    out["type"] = item.type
    return out


class FunctionTool(_Body):
    """A function the model may call (the Responses' flat shape)."""

    type: Literal["function"]
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = Field(None, max_length=MAX_DESCRIPTION)
    parameters: dict[str, Any] | None = None
    strict: bool | None = None  # calls are held to the schema either way

    def chat(self) -> dict[str, Any]:
        fn = {"name": self.name, "description": self.description,
              "parameters": self.parameters, "strict": self.strict}
        return {"type": "function", "function": {k: v for k, v in fn.items() if v is not None}}

    def echo(self) -> dict[str, Any]:
        return {"type": "function", "name": self.name, "description": self.description,
                "parameters": self.parameters, "strict": self.strict is not False}


TOOL_FIELDS = {"type", "name", "description", "parameters", "strict"}


def _parse_tool(raw: Any, where: str) -> FunctionTool:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: a tool is an object")
    kind = raw.get("type")
    if kind != "function":
        raise ValueError(f"{where}: tool type {kind!r} is not supported by this box (no "
                         "built-in tools: web search, file search, code interpreter, "
                         "computer use, MCP, ...); only 'function' tools")
    extra = sorted(k for k, v in raw.items() if k not in TOOL_FIELDS and v not in (None, False))
    if extra:
        raise ValueError(f"{where}: {', '.join(repr(k) for k in extra)} "
                         f"{'is' if len(extra) == 1 else 'are'} not supported by this box")
    try:
        return FunctionTool.model_validate(raw)
    except ValidationError as exc:
        raise ValueError(_errors(exc, where)) from None


class NamedFunction(_Body):
    type: Literal["function"]
    name: str = Field(min_length=1, max_length=64)


class TextFormat(_Body):
    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None
    description: str | None = None  # a hint only: the grammar holds the output to the schema

    @model_validator(mode="after")
    def _complete(self) -> TextFormat:
        if self.type == "json_schema" and (self.name is None or self.schema_ is None):
            raise ValueError("a 'json_schema' format needs 'name' and 'schema'")
        return self

    def chat(self) -> dict[str, Any]:
        if self.type != "json_schema":
            return {"type": self.type}
        return {"type": "json_schema", "json_schema": {
            "name": self.name, "schema": self.schema_, "strict": self.strict}}

    def echo(self) -> dict[str, Any]:
        out = {"type": self.type}
        if self.type == "json_schema":
            out |= {"name": self.name, "schema": self.schema_, "strict": self.strict,
                    "description": self.description}
        return out


class TextConfig(_Body):
    format: TextFormat | None = None
    verbosity: None = None  # refused unless null (below)

    @model_validator(mode="before")
    @classmethod
    def _verbosity(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("verbosity") is not None:
            raise ValueError("'text.verbosity' is not supported by this box")
        return data


class ResponseRequest(_Body):
    """``POST /v1/responses``; see the module docstring and README "Responses API"."""

    model: str = Field(min_length=1, max_length=128)
    input: str | list[Item] = Field(default_factory=list)
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1, le=1_000_000)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, ge=0.0, le=1.0)
    stream: bool = False
    tools: list[FunctionTool] = Field(default_factory=list)
    tool_choice: Literal["none", "auto", "required"] | NamedFunction | None = None
    parallel_tool_calls: bool = True
    text: TextConfig | None = None
    store: bool = True
    previous_response_id: str | None = Field(None, min_length=1, max_length=128)
    metadata: dict[str, str] | None = None
    user: str | None = Field(None, max_length=256)

    @model_validator(mode="before")
    @classmethod
    def _known(cls, data: Any) -> Any:
        """Explicit nulls mean the default; unknown or unsupported names are a 400."""
        if not isinstance(data, dict):
            return data
        data = {k: v for k, v in data.items() if v is not None}
        problems = []
        for name, value in data.items():
            if name in cls.model_fields or name in NO_EFFECT:
                continue
            if name in REFUSED:
                if not _no_op(name, value):
                    problems.append(_why(name, value))
            else:
                problems.append(f"'{name}' is not a parameter this box knows; remove it")
        if problems:
            raise ValueError("; ".join(problems))
        return data

    @field_validator("input", mode="before")
    @classmethod
    def _items(cls, v: Any) -> Any:
        if isinstance(v, list):
            if len(v) > MAX_INPUT_ITEMS:
                raise ValueError(f"input holds {len(v)} items; at most {MAX_INPUT_ITEMS}")
            return [parse_item(raw, f"input[{i}]") for i, raw in enumerate(v)]
        return v

    @field_validator("tools", mode="before")
    @classmethod
    def _tools(cls, v: Any) -> Any:
        if isinstance(v, list):
            if len(v) > MAX_TOOLS:
                raise ValueError(f"at most {MAX_TOOLS} tools")
            return [_parse_tool(raw, f"tools[{i}]") for i, raw in enumerate(v)]
        return v

    @field_validator("tool_choice", mode="before")
    @classmethod
    def _choice(cls, v: Any) -> Any:
        if isinstance(v, dict) and v.get("type") != "function":
            raise ValueError(f"tool_choice type {v.get('type')!r} is not supported by this "
                             "box; use 'none', 'auto', 'required' or "
                             "{'type': 'function', 'name': ...}")
        return v

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is None:
            return v
        if len(v) > MAX_METADATA:
            raise ValueError(f"at most {MAX_METADATA} metadata pairs")
        for key, value in v.items():
            if len(key) > MAX_METADATA_KEY or len(value) > MAX_METADATA_VALUE:
                raise ValueError(f"metadata keys hold at most {MAX_METADATA_KEY} characters "
                                 f"and values {MAX_METADATA_VALUE} ({key[:20]!r})")
        return v

    @model_validator(mode="after")
    def _combination(self) -> ResponseRequest:
        names = [t.name for t in self.tools]
        choice = self.tool_choice
        if isinstance(choice, NamedFunction) and choice.name not in names:
            raise ValueError(f"tool_choice names function {choice.name!r}, which is not in "
                             "tools")
        if choice == "required" and not self.tools:
            raise ValueError("tool_choice 'required' needs at least one function in tools")
        fmt = self.format()
        if self.tools and fmt.type != "text" and choice in (None, "auto"):
            raise ValueError("text.format with tools needs tool_choice 'none', 'required' or "
                             "a named function (under 'auto' the answer may be either a "
                             "call or constrained text)")
        if not self.items() and self.previous_response_id is None:
            raise ValueError("input is empty")
        return self

    def format(self) -> TextFormat:
        return (self.text.format if self.text and self.text.format else None) or TextFormat()

    def items(self) -> list[Item]:
        """The input as items (a string is one user message)."""
        if isinstance(self.input, str):
            return [MessageItem(role="user", content=self.input)]
        return list(self.input)

    def chat_request(self, history: list[Item]) -> ChatCompletionRequest:
        """The chat request this response runs as: the instructions as a system message,
        then ``history`` (a stored conversation, already checked) and the input, function
        calls folded into assistant turns and their outputs into tool messages."""
        messages: list[dict[str, Any]] = []
        if self.instructions:
            messages.append({"role": "system", "content": self.instructions})
        called: set[str] = set()
        own = self.items()
        start = len(history)
        for k, item in enumerate([*history, *own]):
            where = f"input[{k - start}]" if k >= start else "the stored conversation"
            if isinstance(item, MessageItem):
                messages.append(item.chat())
            elif isinstance(item, FunctionCallItem):
                called.add(item.call_id)
                call = {"id": item.call_id, "type": "function",
                        "function": {"name": item.name, "arguments": item.arguments}}
                last = messages[-1] if messages else None
                if last is not None and last["role"] == "assistant":
                    last.setdefault("tool_calls", []).append(call)
                else:
                    messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
            else:
                if item.call_id not in called:
                    raise InvalidRequestError(
                        f"{where}: no function_call with call_id {item.call_id!r} comes "
                        "before this function_call_output")
                messages.append({"role": "tool", "tool_call_id": item.call_id,
                                 "content": _text(item.output)})
        body: dict[str, Any] = {
            "model": self.model, "messages": messages, "temperature": self.temperature,
            "top_p": self.top_p, "max_completion_tokens": self.max_output_tokens,
            "response_format": self.format().chat(),
            "parallel_tool_calls": self.parallel_tool_calls,
            "stream": self.stream}
        if self.tools:
            body["tools"] = [t.chat() for t in self.tools]
        choice = self.tool_choice
        if isinstance(choice, NamedFunction):
            body["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
        elif choice is not None:
            body["tool_choice"] = choice
        try:
            return ChatCompletionRequest.model_validate(body)
        except ValidationError as exc:
            raise InvalidRequestError(_errors(exc, "request")) from None
        except ValueError as exc:
            raise InvalidRequestError(str(exc)) from None

    def echo(self) -> dict[str, Any]:
        """The request's settings as the Response object repeats them."""
        choice = self.tool_choice
        return {
            "instructions": self.instructions, "max_output_tokens": self.max_output_tokens,
            "metadata": self.metadata or {}, "model": self.model,
            "parallel_tool_calls": self.parallel_tool_calls,
            "previous_response_id": self.previous_response_id,
            "temperature": self.temperature, "top_p": self.top_p,
            "tool_choice": (choice.model_dump() if isinstance(choice, NamedFunction)
                            else choice or "auto"),
            "tools": [t.echo() for t in self.tools], "text": {"format": self.format().echo()},
            "store": self.store, "user": self.user, "truncation": "disabled",
            "reasoning": {"effort": None, "summary": None}, "background": False,
            "service_tier": "default", "top_logprobs": 0}

    def stored_size(self, history: list[dict[str, Any]]) -> int:
        """Bytes of the conversation a stored response keeps (JSON)."""
        own = [dump_item(i) for i in self.items()]
        return len(json.dumps([*history, *own], separators=(",", ":"), ensure_ascii=False)
                   .encode())


def history_items(stored: list[dict[str, Any]]) -> list[Item]:
    """A stored conversation as items again (output messages are assistant messages)."""
    out: list[Item] = []
    for i, raw in enumerate(stored):
        item = {k: v for k, v in raw.items() if k not in ("id", "status")}
        out.append(parse_item(item, f"stored item {i}"))
    return out

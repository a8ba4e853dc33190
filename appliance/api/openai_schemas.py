"""Request bodies of the OpenAI-compatible endpoints (the subset the box honours)."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictInt,
    field_validator,
    model_validator,
)

from appliance.api.image_parts import MAX_DATA_URL, image_from_url
from engines.errors import InvalidRequestError
from engines.llm.grammar import check_schema
from engines.llm.tools import Tool, ToolChoice
from engines.types import MAX_IMAGES

MAX_TOP_LOGPROBS = 20  # chat ``top_logprobs`` (OpenAI's bound; the engine's too)
MAX_LEGACY_LOGPROBS = 5  # completions ``logprobs`` (OpenAI's bound)
MAX_PROMPTS = 16  # prompts in one /v1/completions request
MAX_N = 128  # OpenAI's bound on ``n``; the box also refuses more than the model's slots
MAX_TOOLS = 128  # functions in one request (OpenAI's own limit)
MAX_TOOLS_BYTES = 256 << 10  # all function definitions together, as JSON
MAX_DESCRIPTION = 8192


def _valid_unicode(value: Any, where: str = "body") -> None:
    """ValueError naming the first string that is not valid Unicode (a lone surrogate such
    as "\\ud800" parses as JSON but cannot reach a tokenizer, a database or a log)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"{where} is not valid Unicode: {exc.reason} at position "
                             f"{exc.start}") from None
    elif isinstance(value, dict):
        for k, v in value.items():
            _valid_unicode(k, where)
            _valid_unicode(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _valid_unicode(v, f"{where}[{i}]")


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _unicode(cls, data: Any) -> Any:
        _valid_unicode(data)
        return data


class ImageURL(_Body):
    """``image_url`` of a content part: a data URL (``data:image/png;base64,...``); the box
    fetches nothing, so a remote URL is refused. ``detail`` other than ``auto`` would change
    how the image is read, which the box does not do: refused."""

    url: str = Field(max_length=MAX_DATA_URL)
    detail: Literal["auto", "low", "high"] | None = None
    _data: bytes = PrivateAttr(b"")

    @model_validator(mode="after")
    def _decode(self) -> ImageURL:
        if self.detail not in (None, "auto"):
            raise ValueError(f"image_url.detail {self.detail!r} is not supported: this box "
                             "reads every image at its model's own resolution; send 'auto' "
                             "or leave it out")
        self._data = image_from_url(self.url)
        return self

    @property
    def data(self) -> bytes:
        """The image's encoded bytes (JPEG, PNG or WebP), header already checked."""
        return self._data


class ContentPart(_Body):
    type: Literal["text", "image_url"]
    text: str | None = None
    image_url: ImageURL | None = None

    @model_validator(mode="after")
    def _shape(self) -> ContentPart:
        if self.type == "text" and self.text is None:
            raise ValueError("a 'text' content part needs 'text'")
        if self.type == "image_url" and self.image_url is None:
            raise ValueError("an 'image_url' content part needs 'image_url': {'url': ...}")
        return self


class CalledFunction(_Body):
    name: str = Field(min_length=1, max_length=64)
    arguments: str = Field("", max_length=MAX_TOOLS_BYTES)


class ToolCall(_Body):
    """A call an assistant made earlier in the conversation."""

    id: str = Field(min_length=1, max_length=128)
    type: Literal["function"] = "function"
    function: CalledFunction


class ChatMessage(_Body):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[ContentPart] | None = None
    tool_calls: list[ToolCall] | None = Field(None, max_length=MAX_TOOLS)
    tool_call_id: str | None = Field(None, max_length=128)
    name: str | None = Field(None, max_length=64)

    @model_validator(mode="after")
    def _tool_fields(self) -> ChatMessage:
        if self.role != "user" and self.images():
            raise ValueError(f"only user messages may hold images, not {self.role!r} ones")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry 'tool_calls'")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a 'tool' message needs the 'tool_call_id' it answers")
        return self

    def images(self) -> list[bytes]:
        """The images of this message's content, in order."""
        if not isinstance(self.content, list):
            return []
        return [p.image_url.data for p in self.content
                if p.type == "image_url" and p.image_url is not None]

    def rendered(self, image_marker: str | None = None) -> dict[str, Any]:
        """The message as the engine renders it: content as text, each image as
        ``image_marker`` (``ValueError`` for an image without one)."""
        out: dict[str, Any] = {"role": self.role, "content": self.text(image_marker)}
        if self.tool_calls:
            out["tool_calls"] = [c.model_dump() for c in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        if self.name is not None:
            out["name"] = self.name
        return out

    def text(self, image_marker: str | None = None) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for p in self.content:
            if p.type == "image_url":
                if image_marker is None:
                    raise ValueError("image content needs a model that takes images")
                parts.append(image_marker)
            else:
                parts.append(p.text or "")
        return "".join(parts)


class FunctionDef(_Body):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = Field(None, max_length=MAX_DESCRIPTION)
    parameters: dict[str, Any] | None = None
    strict: bool | None = None  # calls the box forces always match the schema


class ToolDef(_Body):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Body):
    name: str = Field(min_length=1, max_length=64)


class NamedToolChoice(_Body):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaSpec(_Body):
    name: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: JsonSchemaSpec | None = None


class StreamOptions(_Body):
    include_usage: bool = False


# Parameters of OpenAI's request schemas that cannot change the answer: accepted, no effect.
# The README's parameter table lists them; tests/api/test_parameter_table.py checks it.
NO_EFFECT = frozenset({"user", "metadata", "store", "service_tier", "prompt_cache_key",
                       "prompt_cache_retention", "prompt_cache_options",
                       "safety_identifier"})


def _unsupported(name: str, value: Any) -> str | None:
    """Why the box refuses ``name`` with this value, or None when it may pass."""
    if name == "functions" and value:
        return "'functions' (deprecated by OpenAI) is not supported; send them as 'tools'"
    if name == "function_call" and value not in (None, "none"):
        return "'function_call' (deprecated by OpenAI) is not supported; use 'tool_choice'"
    if name in ("logprobs", "top_logprobs") and value is not None and value is not False:
        return f"'{name}' applies to /v1/chat/completions and /v1/completions only"
    if name == "echo" and value:
        return "'echo' applies to /v1/completions only"
    if name == "best_of" and value not in (None, 1):
        return "'best_of' above 1 is not supported by this box"
    if name == "suffix" and value:
        return "'suffix' (insertion) is not supported by this box"
    if name == "modalities" and value not in (None, ["text"]):
        return "'modalities' other than [\"text\"] are not supported by this box"
    if name in ("audio", "prediction", "web_search_options", "reasoning_effort",
                "verbosity", "moderation") and value is not None:
        return f"'{name}' is not supported by this box"
    return None


def _refuse_unknown(cls: type[BaseModel], data: Any) -> None:
    """400 naming every parameter the box would otherwise have ignored silently."""
    if not isinstance(data, dict):
        return
    known = set(cls.model_fields) | {f.alias for f in cls.model_fields.values() if f.alias}
    problems = []
    for name, value in data.items():
        if name in known or name in NO_EFFECT:
            continue
        why = _unsupported(name, value)
        if why is None and name in REFUSABLE:
            continue  # a known parameter at its no-op value (tools=[], logprobs=false, ...)
        problems.append(why or f"'{name}' is not a parameter this box knows; remove it")
    if problems:
        raise ValueError("; ".join(problems))


REFUSABLE = frozenset({"functions", "function_call", "logprobs",
                       "echo", "top_logprobs", "best_of", "suffix", "modalities", "audio",
                       "prediction", "web_search_options", "reasoning_effort", "verbosity",
                       "moderation"})


class _Sampling(_Body):
    model: str = Field(min_length=1, max_length=128)
    max_tokens: int | None = Field(None, ge=1, le=1_000_000)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, ge=0.0, le=1.0)  # 0 keeps only the likeliest token
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=MAX_N)  # also at most the model's slots (checked with it)
    user: str | None = None
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    # Extension (not in OpenAI's schema; vLLM's name): llama.cpp's repeat penalty over the
    # completion so far, dividing a positive logit (multiplying a negative one) of every
    # token already generated; 1 is off.
    repetition_penalty: float = Field(1.0, gt=0.0, le=2.0)
    logit_bias: dict[str, float] | None = Field(None, max_length=1024)

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        for token, bias in (v or {}).items():
            if not token.isdigit() or len(token) > 9:
                raise ValueError(f"logit_bias key {token[:20]!r} is not a token id")
            if not -100 <= bias <= 100:
                raise ValueError(f"logit_bias of token {token} must be within -100..100")
        return v

    def biases(self) -> tuple[tuple[int, float], ...]:
        return tuple((int(t), float(b)) for t, b in (self.logit_bias or {}).items())

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> str | list[str] | None:
        items = [v] if isinstance(v, str) else (v or [])
        if len(items) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(not s for s in items):
            raise ValueError("stop sequences must be non-empty")
        return v

    @model_validator(mode="before")
    @classmethod
    def _nulls_mean_default(cls, data: Any) -> Any:
        """An explicit ``null`` means "the default", as in OpenAI's schema."""
        if isinstance(data, dict):
            defaulted = ("temperature", "top_p", "n", "stream", "stop", "seed", "user",
                         "stream_options", "max_tokens", "max_completion_tokens",
                         "response_format", "presence_penalty", "frequency_penalty",
                         "logit_bias", "repetition_penalty", "logprobs", "top_logprobs",
                         "echo")
            data = {k: v for k, v in data.items() if not (v is None and k in defaulted)}
        _refuse_unknown(cls, data)
        return data

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=1_000_000)
    response_format: ResponseFormat | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: list[ToolDef] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None

    @model_validator(mode="after")
    def _top_needs_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("'top_logprobs' needs 'logprobs': true")
        return self

    @model_validator(mode="after")
    def _image_count(self) -> ChatCompletionRequest:
        n = len(self.images())
        if n > MAX_IMAGES:
            raise ValueError(f"the messages hold {n} images; this box reads at most "
                             f"{MAX_IMAGES} per request")
        return self

    def images(self) -> list[bytes]:
        """Every image of the conversation, in order."""
        return [data for m in self.messages for data in m.images()]

    def logprob_count(self) -> int | None:
        """Alternatives per token for the engine; None when logprobs were not asked."""
        return (self.top_logprobs or 0) if self.logprobs else None

    @model_validator(mode="after")
    def _tools(self) -> ChatCompletionRequest:
        tools = self.tools or []
        names = [t.function.name for t in tools]
        if len(set(names)) != len(names):
            raise ValueError("tools: function names must be unique")
        size = len(json.dumps([t.model_dump(exclude_none=True) for t in tools],
                              ensure_ascii=False))
        if size > MAX_TOOLS_BYTES:
            raise ValueError(f"tools: the function definitions are {size} bytes; this box "
                             f"accepts at most {MAX_TOOLS_BYTES}")
        for i, t in enumerate(tools):
            if t.function.parameters is not None:
                try:
                    check_schema(t.function.parameters)
                except InvalidRequestError as exc:
                    raise ValueError(f"tools[{i}].function.parameters "
                                     f"({t.function.name}): {exc}") from None
        choice = self.tool_choice
        if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
            raise ValueError(f"tool_choice names function {choice.function.name!r}, which "
                             "is not in tools")
        if choice == "required" and not tools:
            raise ValueError("tool_choice 'required' needs at least one function in tools")
        rf = self.response_format
        if (tools and rf is not None and rf.type != "text"
                and self.choice().mode == "auto"):
            raise ValueError("response_format with tools needs tool_choice 'none', "
                             "'required' or a named function (under 'auto' the answer "
                             "may be either a call or constrained text)")
        return self

    def choice(self) -> ToolChoice:
        """The tool choice, OpenAI's defaults applied (auto with tools, else none)."""
        c = self.tool_choice
        if isinstance(c, NamedToolChoice):
            return ToolChoice("required", c.function.name)
        if c is None:
            return ToolChoice("auto" if self.tools else "none")
        return ToolChoice(c)

    def tool_specs(self) -> list[Tool]:
        return [Tool(t.function.name, t.function.description or "", t.function.parameters)
                for t in self.tools or []]


TokenId = Annotated[StrictInt, Field(ge=0)]
Prompt = str | list[TokenId]


class CompletionRequest(_Sampling):
    # One string, a list of strings, a list of token ids or a list of such lists.
    prompt: str | list[str] | list[TokenId] | list[list[TokenId]]
    max_tokens: int | None = Field(16, ge=1, le=1_000_000)
    logprobs: int | None = Field(None, ge=0, le=MAX_LEGACY_LOGPROBS)
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, v: Any) -> Any:
        if isinstance(v, list):
            if not v:
                raise ValueError("the prompt list is empty")
            if isinstance(v[0], list):
                if len(v) > MAX_PROMPTS:
                    raise ValueError(f"at most {MAX_PROMPTS} prompts per request")
                if any(not p for p in v):
                    raise ValueError("a token-array prompt is empty")
            elif isinstance(v[0], str) and len(v) > MAX_PROMPTS:
                raise ValueError(f"at most {MAX_PROMPTS} prompts per request")
        return v

    def prompts(self) -> list[Prompt]:
        """Each prompt: text, or token ids (a flat list of ints is one prompt)."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and isinstance(p[0], int):
            return [list(p)]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]


#: Items of one embeddings request the schema accepts at all; the box's own limit is the
#: setting embed_max_inputs (checked by the route).
MAX_EMBEDDING_INPUTS = 100_000
TokenId = Annotated[int, Field(strict=True, ge=0)]


class EmbeddingRequest(_Body):
    """``input``: a string, a list of strings, or OpenAI token ids (one list, or a list of
    lists, as ``langchain_openai`` sends); ``dimensions``: checked against the model by
    ``appliance.embeddings.check_dimensions``."""

    model: str = Field(min_length=1, max_length=128)
    input: (str | list[str] | list[TokenId] | list[list[TokenId]]) = Field(...)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, le=65536)
    user: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _known(cls, data: Any) -> Any:
        if isinstance(data, dict):  # explicit nulls mean "the default"
            data = {k: v for k, v in data.items()
                    if not (v is None and k in ("dimensions", "encoding_format", "user"))}
        _refuse_unknown(cls, data)
        return data

    @field_validator("input")
    @classmethod
    def _inputs(cls, v: Any) -> Any:
        if isinstance(v, list) and not 1 <= len(v) <= MAX_EMBEDDING_INPUTS:
            raise ValueError(f"input must hold 1 to {MAX_EMBEDDING_INPUTS} items")
        if isinstance(v, list) and any(isinstance(x, list) and not x for x in v):
            raise ValueError("a token array in input is empty")
        return v

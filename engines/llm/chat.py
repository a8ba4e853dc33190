"""Render chat messages into a prompt with the Jinja2 template stored in the GGUF file.

Pure: the template text and special tokens come from the model's metadata. Templates run
in Jinja2's sandbox, so a hostile model file cannot reach Python objects.

Messages may carry what OpenAI's tool calling adds (an assistant's ``tool_calls``, a tool
result's ``tool_call_id`` and ``name``), and ``tools`` is passed to templates that render
tool definitions, in the shape the reference templates expect (``{"type": "function",
"function": {"name", "description", "parameters"}}``; call arguments as objects).
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from engines.errors import InvalidRequestError

# Used when a model file carries no template: ChatML, which most small instruct models know.
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
ROLES = ("system", "user", "assistant", "tool", "developer")
# Values templates compare against constants; every other string a caller sends is content.
_STRUCTURAL = frozenset({"role", "type"})
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_$.\-]{1,64}")  # no control token is spelled like this


def _raise(message: str) -> None:
    raise InvalidRequestError(f"chat template error: {message}")


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    """JSON as the reference chat templates expect it (no HTML escaping, Unicode kept)."""
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii,
                      separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return time.strftime(fmt)


@lru_cache(maxsize=16)
def _compile(template: str) -> Any:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = _strftime_now
    env.filters["tojson"] = _tojson
    return env.from_string(template)


def _tool_call(call: Any, where: str) -> dict[str, Any]:
    """One assistant tool call, its arguments as an object when they are a JSON object."""
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise InvalidRequestError(f"{where} must be {{'id', 'type': 'function', "
                                  "'function': {'name', 'arguments'}}")
    args = fn.get("arguments")
    if isinstance(args, str):
        try:
            parsed = json.loads(args) if args.strip() else {}
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            args = parsed
    elif args is None:
        args = {}
    return {"id": str(call.get("id") or ""), "type": "function",
            "function": {"name": fn["name"], "arguments": args}}


def _clean(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    if not messages:
        raise InvalidRequestError("messages must contain at least one message")
    clean: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        role = m.get("role")
        if role not in ROLES:
            raise InvalidRequestError(f"messages[{i}].role {role!r} is not one of {ROLES}")
        content = m.get("content")
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise InvalidRequestError(f"messages[{i}].content must be a string")
        out: dict[str, Any] = {"role": "system" if role == "developer" else role,
                               "content": content}
        calls = m.get("tool_calls")
        if calls:
            if role != "assistant" or not isinstance(calls, list):
                raise InvalidRequestError(f"messages[{i}].tool_calls belongs to an assistant "
                                          "message and must be a list")
            out["tool_calls"] = [_tool_call(c, f"messages[{i}].tool_calls[{j}]")
                                 for j, c in enumerate(calls)]
        for key in ("tool_call_id", "name"):
            if isinstance(m.get(key), str):
                out[key] = m[key]
        clean.append(out)
    return clean


def _render(clean: list[dict[str, Any]], template: str | None, bos_token: str,
            eos_token: str, add_generation_prompt: bool,
            tools: list[dict[str, Any]] | None) -> str:
    try:
        return str(_compile(template or CHATML).render(
            messages=clean, bos_token=bos_token, eos_token=eos_token,
            add_generation_prompt=add_generation_prompt, tools=tools,
        ))
    except InvalidRequestError:
        raise
    except TemplateError as exc:
        raise InvalidRequestError(f"chat template error: {exc}") from exc
    except (TypeError, ValueError, AttributeError, KeyError) as exc:  # template vs. our data
        raise InvalidRequestError(f"chat template error: {type(exc).__name__}: {exc}") from exc


def render_chat(
    messages: Sequence[dict[str, Any]],
    template: str | None,
    *,
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = True,
    tools: Sequence[dict[str, Any]] | None = None,
) -> str:
    """Prompt text for ``messages``; InvalidRequestError on bad roles or template errors."""
    return _render(_clean(messages), template, bos_token, eos_token, add_generation_prompt,
                   list(tools) if tools is not None else None)


Segment = tuple[str, bool]  # (text, is message content)


class _Marker:
    """Replaces every string a caller sent with a numbered placeholder.

    A placeholder ends in ``\\x01``, which JSON escapes as ``\\u0001``: after rendering,
    a placeholder printed as is stands for the raw string, one printed through ``tojson``
    for the string JSON-escaped."""

    def __init__(self) -> None:
        self.nonce = secrets.token_hex(8)
        self.strings: list[str] = []

    def _one(self, s: str) -> str:
        self.strings.append(s)
        return f"\ue000{self.nonce}:{len(self.strings) - 1}\x01\ue001"

    def mark(self, value: Any, key: str | None = None) -> Any:
        if isinstance(value, str):
            if key in _STRUCTURAL and _PLAIN_KEY.fullmatch(value):
                return value
            return self._one(value)
        if isinstance(value, dict):
            return {(k if isinstance(k, str) and _PLAIN_KEY.fullmatch(k) else self._one(str(k))):
                    self.mark(v, k if isinstance(k, str) else None) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.mark(v) for v in value]
        return value

    def split(self, text: str) -> list[Segment]:
        pattern = re.compile(f"\ue000{self.nonce}:(\\d+)(\x01|\\\\u0001)\ue001")
        out: list[Segment] = []
        at = 0
        for match in pattern.finditer(text):
            out.append((text[at:match.start()], False))
            s = self.strings[int(match.group(1))]
            out.append((s if match.group(2) == "\x01" else
                        json.dumps(s, ensure_ascii=False)[1:-1], True))
            at = match.end()
        out.append((text[at:], False))
        if any("\ue000" in piece or self.nonce in piece.lower() for piece, is_content in out
               if not is_content):
            raise InvalidRequestError("this model's chat template rewrites message content, "
                                      "so the box cannot keep user text apart from control "
                                      "tokens")
        return out


def render_chat_segments(
    messages: Sequence[dict[str, Any]],
    template: str | None,
    *,
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = True,
    tools: Sequence[dict[str, Any]] | None = None,
) -> list[Segment]:
    """The prompt as pieces: the template's own text, whose special tokens (``<|im_start|>``)
    are real, and every string the caller sent (message content, tool definitions, call
    arguments) verbatim, which must be tokenised as plain text so that a user cannot forge
    a turn by typing a control token.

    The template is rendered with a random placeholder per string; a template that alters
    the placeholders (it rewrites content) is refused rather than tokenised unsafely.
    """
    clean = _clean(messages)
    marker = _Marker()
    marked = [{k: (v if k == "role" else marker.mark(v, k)) for k, v in m.items()}
              for m in clean]
    marked_tools = marker.mark(list(tools)) if tools is not None else None
    text = _render(marked, template, bos_token, eos_token, add_generation_prompt, marked_tools)
    return marker.split(text)

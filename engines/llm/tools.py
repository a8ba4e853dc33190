"""OpenAI tool calling over a chat template (pure).

Three call formats, picked from the model's chat template:

- ``hermes``: the template renders ``tools`` and teaches ``<tool_call>{"name": ...,
  "arguments": {...}}</tool_call>`` (Hermes 2 Pro, Qwen 2.5 and their kin);
- ``llama3``: the template renders ``tools`` with Llama 3.x headers, and the model answers
  a call with a bare ``{"name": ..., "parameters": {...}}`` object;
- ``generic``: the template knows no tools (SmolLM2, Gemma 3). The tools are described in
  the system prompt, calls and results in past turns become plain text in the same
  ``<tool_call>`` shape, and a grammar (see ``toolgrammar``) holds the model to it.

``prepare`` turns a request's messages into what the template is given; the grammar and
the parser of the model's answer (``toolparse``) follow the same format.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

Mode = Literal["none", "auto", "required"]


@dataclass(frozen=True)
class Tool:
    """A function the model may call: its JSON schema is ``parameters``."""

    name: str
    description: str = ""
    parameters: dict[str, Any] | None = None

    def schema(self) -> dict[str, Any]:
        """The arguments' schema (an object with no properties when none was given)."""
        return self.parameters if self.parameters is not None else {"type": "object",
                                                                      "properties": {}}

    def openai(self) -> dict[str, Any]:
        """The definition as OpenAI sends it (the shape chat templates read)."""
        fn: dict[str, Any] = {"name": self.name}
        if self.description:
            fn["description"] = self.description
        fn["parameters"] = self.schema()
        return {"type": "function", "function": fn}


@dataclass(frozen=True)
class ToolChoice:
    """``none``, ``auto``, ``required``; ``required`` with ``name`` forces that function."""

    mode: Mode = "auto"
    name: str | None = None


@dataclass(frozen=True)
class CallFormat:
    """How one family of models writes a call."""

    name: Literal["hermes", "llama3", "generic"]
    native: bool  # the chat template renders tools and past calls itself
    open_tag: str  # before each call ("" for a bare JSON object)
    close_tag: str
    args_key: str  # "arguments" or "parameters"

    @property
    def trigger(self) -> str:
        """Regex (llama.cpp's lazy grammar pattern) of where a call starts in free text."""
        if self.open_tag:
            return re.escape(self.open_tag)
        return r"^\s*(?:<\|python_tag\|>)?\s*(\{)[\s\S]*$"


HERMES = CallFormat("hermes", True, "<tool_call>", "</tool_call>", "arguments")
LLAMA3 = CallFormat("llama3", True, "", "", "parameters")
GENERIC = CallFormat("generic", False, "<tool_call>", "</tool_call>", "arguments")

_USES_TOOLS = re.compile(r"\btools\b")


def call_format(template: str | None) -> CallFormat:
    """The format a model with this chat template calls tools in."""
    if template and _USES_TOOLS.search(template):
        if "<tool_call>" in template:
            return HERMES
        if "<|start_header_id|>" in template:
            return LLAMA3
    return GENERIC


def _call_text(fmt: CallFormat, name: str, arguments: Any) -> str:
    if isinstance(arguments, str):
        with contextlib.suppress(ValueError):  # broken arguments are shown as sent
            arguments = json.loads(arguments) if arguments.strip() else {}
    body = json.dumps({"name": name, fmt.args_key: arguments}, ensure_ascii=False)
    return f"{fmt.open_tag}{body}{fmt.close_tag}"


def system_prompt(tools: Sequence[Tool], choice: ToolChoice) -> str:
    """What the generic format tells the model about its tools."""
    listed = json.dumps([{"name": t.name, "description": t.description,
                          "parameters": t.schema()} for t in tools], ensure_ascii=False)
    lines = [
        "You can call these functions (JSON):",
        listed,
        "To call a function, answer with "
        '<tool_call>{"name": "<function name>", "arguments": {<arguments as JSON>}}'
        "</tool_call>",
    ]
    if choice.name:
        lines.append(f"You must now call the function {choice.name}.")
    elif choice.mode == "required":
        lines.append("You must now call one of the functions.")
    else:
        lines.append("Call a function only when it helps; otherwise answer in plain text.")
    return "\n".join(lines)


def _names_by_id(messages: Sequence[dict[str, Any]]) -> dict[str, str]:
    names: dict[str, str] = {}
    for m in messages:
        for call in m.get("tool_calls") or ():
            fn = call.get("function") or {}
            if call.get("id") and fn.get("name"):
                names[str(call["id"])] = str(fn["name"])
    return names


def _generic_history(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Past calls and tool results as plain text turns any template can render: a call
    joins its assistant turn, results become a user turn (templates that insist on
    alternating user and assistant turns accept that)."""
    names = _names_by_id(messages)
    out: list[dict[str, Any]] = []
    for m in messages:
        role, content = m["role"], m.get("content") or ""
        if role == "assistant" and m.get("tool_calls"):
            calls = [_call_text(GENERIC, c["function"]["name"], c["function"].get("arguments"))
                     for c in m["tool_calls"]]
            content = "\n".join(([content] if content else []) + calls)
            out.append({"role": "assistant", "content": content})
        elif role == "tool":
            name = m.get("name") or names.get(str(m.get("tool_call_id")), "")
            body = json.dumps({"name": name, "content": content}, ensure_ascii=False)
            out.append({"role": "user", "content": f"<tool_response>{body}</tool_response>"})
        else:
            out.append({"role": role, "content": content})
    merged: list[dict[str, Any]] = []
    for m in out:  # one user turn for consecutive results (and a question after them)
        if merged and m["role"] == merged[-1]["role"] == "user":
            merged[-1] = {"role": "user", "content": merged[-1]["content"] + "\n" + m["content"]}
        else:
            merged.append(m)
    return merged


def prepare(messages: Sequence[dict[str, Any]], tools: Sequence[Tool], choice: ToolChoice,
            fmt: CallFormat) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The messages and ``tools`` argument for the chat template.

    Native formats hand both to the template (``tools`` only when the model may call one;
    tool results get the called function's ``name``). The generic format writes the tools
    into the system prompt and past calls and results into plain turns."""
    if fmt.native:
        names = _names_by_id(messages)
        out = [({**m, "name": names[str(m.get("tool_call_id"))]}
                if m["role"] == "tool" and not m.get("name")
                and str(m.get("tool_call_id")) in names else dict(m)) for m in messages]
        offered = [t.openai() for t in tools] if tools and choice.mode != "none" else None
        return out, offered
    out = _generic_history(messages)
    if tools and choice.mode != "none":
        prompt = system_prompt(tools, choice)
        if out and out[0]["role"] in ("system", "developer") and out[0]["content"]:
            out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + prompt}
        else:
            out = [{"role": "system", "content": prompt}] + [
                m for i, m in enumerate(out) if i or m["role"] not in ("system", "developer")]
    return out, None

"""Render chat messages into a prompt with the Jinja2 template stored in the GGUF file.

Pure: the template text and special tokens come from the model's metadata. Templates run
in Jinja2's sandbox, so a hostile model file cannot reach Python objects.
"""

from __future__ import annotations

import re
import secrets
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


def _raise(message: str) -> None:
    raise InvalidRequestError(f"chat template error: {message}")


@lru_cache(maxsize=16)
def _compile(template: str) -> Any:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise
    return env.from_string(template)


def _clean(messages: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    if not messages:
        raise InvalidRequestError("messages must contain at least one message")
    clean = []
    for i, m in enumerate(messages):
        role = m.get("role")
        if role not in ROLES:
            raise InvalidRequestError(f"messages[{i}].role {role!r} is not one of {ROLES}")
        content = m.get("content")
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise InvalidRequestError(f"messages[{i}].content must be a string")
        clean.append({"role": "system" if role == "developer" else role, "content": content})
    return clean


def _render(clean: list[dict[str, str]], template: str | None, bos_token: str,
            eos_token: str, add_generation_prompt: bool) -> str:
    try:
        return str(_compile(template or CHATML).render(
            messages=clean, bos_token=bos_token, eos_token=eos_token,
            add_generation_prompt=add_generation_prompt,
        ))
    except InvalidRequestError:
        raise
    except TemplateError as exc:
        raise InvalidRequestError(f"chat template error: {exc}") from exc


def render_chat(
    messages: Sequence[dict[str, Any]],
    template: str | None,
    *,
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = True,
) -> str:
    """Prompt text for ``messages``; InvalidRequestError on bad roles or template errors."""
    return _render(_clean(messages), template, bos_token, eos_token, add_generation_prompt)


Segment = tuple[str, bool]  # (text, is message content)


def render_chat_segments(
    messages: Sequence[dict[str, Any]],
    template: str | None,
    *,
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = True,
) -> list[Segment]:
    """The prompt as pieces: the template's own text, whose special tokens (``<|im_start|>``)
    are real, and each message's content verbatim, which must be tokenised as plain text so
    that a user cannot forge a turn by typing a control token.

    The template is rendered with a random placeholder per message; a template that alters
    the placeholders (it rewrites content) is refused rather than tokenised unsafely.
    """
    clean = _clean(messages)
    nonce = secrets.token_hex(8)
    marked = [{**m, "content": f"\ue000{nonce}:{i}\ue001"} for i, m in enumerate(clean)]
    text = _render(marked, template, bos_token, eos_token, add_generation_prompt)
    pattern = re.compile(f"\ue000{nonce}:(\\d+)\ue001")
    out: list[Segment] = []
    at = 0
    for match in pattern.finditer(text):
        out.append((text[at:match.start()], False))
        out.append((clean[int(match.group(1))]["content"], True))
        at = match.end()
    out.append((text[at:], False))
    if any("\ue000" in piece or nonce in piece.lower() for piece, is_content in out
           if not is_content):
        raise InvalidRequestError("this model's chat template rewrites message content, so "
                                  "the box cannot keep user text apart from control tokens")
    return out

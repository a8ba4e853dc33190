"""Prepare a chat generation that may call tools: prompt, grammar and answer parser.

Runs where prompts are prepared (off the event loop): it calls the engine to compile each
function's argument schema and to tokenise the prompt, so a worker-backed engine works
the same as an in-process one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from engines.base import LLMEngine
from engines.errors import InvalidRequestError
from engines.llm.grammar import check_grammar
from engines.llm.toolgrammar import call_grammar
from engines.llm.toolparse import CallParser
from engines.llm.tools import CallFormat, Tool, ToolChoice, call_format, prepare


@dataclass(frozen=True)
class ToolPlan:
    """What a chat request with tools becomes."""

    fmt: CallFormat
    names: tuple[str, ...]  # functions the answer may call (none under tool_choice none)
    tokens: list[int]
    grammar: str | None
    triggers: tuple[str, ...]  # the grammar is lazy (tool_choice auto) when non-empty

    def parser(self) -> CallParser | None:
        """A fresh parser of the answer, or None when no call can come."""
        return CallParser(self.fmt, self.names) if self.names else None


def plan_tools(engine: LLMEngine, messages: Sequence[dict[str, Any]], tools: Sequence[Tool],
               choice: ToolChoice, *, parallel: bool = True,
               image_marker: str | None = None) -> ToolPlan:
    """Prompt tokens, grammar and call names for ``messages`` with ``tools`` offered.

    ``required`` (or a named function) forces a call: the grammar admits nothing else, and
    arguments always match the function's schema. ``auto`` leaves the model free until it
    starts a call, then holds the call to the grammar. ``parallel=False``: at most one call.
    ``image_marker``: the messages hold images there (``LLMEngine.vision_chat_tokens``).
    Raises InvalidRequestError naming the tool whose schema cannot become a grammar."""
    fmt = call_format(engine.info.chat_template)

    def tokens(rendered: Sequence[dict[str, Any]], offered: Any) -> list[int]:
        if image_marker is None:
            return engine.chat_tokens(rendered, offered)
        return engine.vision_chat_tokens(rendered, offered, image_marker)

    if choice.name is not None and choice.name not in {t.name for t in tools}:
        raise InvalidRequestError(f"tool_choice names function {choice.name!r}, which is "
                                  "not in tools")
    rendered, offered = prepare(messages, tools, choice, fmt)
    if not tools or choice.mode == "none":
        return ToolPlan(fmt, (), tokens(rendered, offered), None, ())
    callable_ = [(i, t) for i, t in enumerate(tools) if choice.name in (None, t.name)]
    arguments = []
    for i, tool in callable_:
        try:
            arguments.append((tool.name, engine.json_schema_grammar(tool.schema())))
        except InvalidRequestError as exc:
            raise InvalidRequestError(f"tools[{i}] ({tool.name}): function.parameters: "
                                      f"{exc}") from exc
    grammar = call_grammar(fmt, arguments, parallel=parallel)
    check_grammar(grammar)
    triggers = (fmt.trigger,) if choice.mode == "auto" else ()
    return ToolPlan(fmt, tuple(t.name for _, t in callable_),
                    tokens(rendered, offered), grammar, triggers)

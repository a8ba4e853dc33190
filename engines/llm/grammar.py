"""Bounds on what a request may make llama.cpp's grammar code build (pure).

A JSON schema becomes a GBNF grammar; ``maxLength: 100000`` becomes 100,000 nested optional
groups, and llama.cpp's recursive grammar parser overflows its stack on them. So schemas
are checked before conversion (size, nesting depth, repetition counts) and grammars before
they reach llama.cpp (size, group nesting). Each refusal names the limit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from engines.errors import InvalidRequestError

REPEAT_KEYS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties",
               "maxProperties", "minContains", "maxContains")


@dataclass(frozen=True)
class GrammarLimits:
    """The largest schema and grammar a request may ask for."""

    max_schema_bytes: int = 64 << 10
    max_schema_depth: int = 32
    max_repeat: int = 1000  # minLength/maxLength/minItems/maxItems/... at most this
    max_grammar_bytes: int = 512 << 10
    max_group_nesting: int = 256  # nested ( ) groups in the GBNF text


LIMITS = GrammarLimits()


def check_schema(schema: Any, limits: GrammarLimits = LIMITS) -> None:
    """InvalidRequestError naming the limit if ``schema`` is too big to turn into a grammar."""
    size = len(json.dumps(schema, ensure_ascii=False))
    if size > limits.max_schema_bytes:
        raise InvalidRequestError(
            f"the JSON schema is {size} bytes; this box accepts at most "
            f"{limits.max_schema_bytes} (limit max_schema_bytes)")
    stack: list[tuple[Any, int, str]] = [(schema, 1, "schema")]
    while stack:
        node, depth, where = stack.pop()
        if depth > limits.max_schema_depth:
            raise InvalidRequestError(
                f"the JSON schema nests deeper than {limits.max_schema_depth} levels at "
                f"{where} (limit max_schema_depth)")
        if isinstance(node, dict):
            for key in REPEAT_KEYS:
                value = node.get(key)
                if isinstance(value, int | float) and not isinstance(value, bool) and (
                        value > limits.max_repeat):
                    raise InvalidRequestError(
                        f"{where}.{key} is {value}; this box allows at most "
                        f"{limits.max_repeat} (limit max_repeat)")
            stack.extend((v, depth + 1, f"{where}.{k}") for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((v, depth + 1, f"{where}[{i}]") for i, v in enumerate(node))


def group_nesting(grammar: str) -> int:
    """Deepest nesting of ( ) groups in GBNF text, outside literals and character classes."""
    depth = deepest = 0
    i, n = 0, len(grammar)
    while i < n:
        c = grammar[i]
        if c in "\"[":  # skip "literal" and [class], honouring backslash escapes
            close = '"' if c == '"' else "]"
            i += 1
            while i < n and grammar[i] != close:
                i += 2 if grammar[i] == "\\" else 1
        elif c == "#":  # comment to end of line
            while i < n and grammar[i] != "\n":
                i += 1
        elif c == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif c == ")":
            depth -= 1
        i += 1
    return deepest


def check_grammar(grammar: str, limits: GrammarLimits = LIMITS) -> None:
    """InvalidRequestError naming the limit if llama.cpp should not be given ``grammar``."""
    size = len(grammar.encode("utf-8", errors="replace"))
    if size > limits.max_grammar_bytes:
        raise InvalidRequestError(
            f"the grammar is {size} bytes; this box accepts at most "
            f"{limits.max_grammar_bytes} (limit max_grammar_bytes)")
    nesting = group_nesting(grammar)
    if nesting > limits.max_group_nesting:
        raise InvalidRequestError(
            f"the grammar nests {nesting} groups deep; this box allows at most "
            f"{limits.max_group_nesting} (limit max_group_nesting)")


_LOOSE_CHAR = 'char ::= [^"\\\\] |'
_JSON_CHAR = 'char ::= [^"\\\\\\x7F\\x00-\\x1F] |'


def json_string_chars(grammar: str) -> str:
    """Keep raw control characters (newline, tab, ...) out of JSON strings.

    The schema converter's ``char`` rule allows any character but a quote or a backslash,
    so a model could emit a raw newline inside a string and the "JSON" would not parse;
    JSON wants those escaped. The rule is narrowed as JSON's own grammar has it."""
    lines = [_JSON_CHAR + line[len(_LOOSE_CHAR):] if line.startswith(_LOOSE_CHAR) else line
             for line in grammar.split("\n")]
    return "\n".join(lines)

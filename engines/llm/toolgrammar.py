"""The GBNF grammar that holds a model to a valid tool call (pure).

Each function's argument grammar comes from the engine's JSON-schema converter; its rules
are renamed apart (``t0-...``, ``t1-...``) and joined under one ``root`` that writes
``{"name": "<one of the functions>", "arguments": <valid arguments>}`` inside the format's
tags, once, or up to ``MAX_CALLS`` times when parallel calls are allowed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from engines.errors import InvalidRequestError
from engines.llm.tools import CallFormat

MAX_CALLS = 8  # calls in one answer when parallel_tool_calls is true
_NAME = re.compile(r"[A-Za-z0-9_-]+")


def rename_rules(grammar: str, prefix: str) -> str:
    """``grammar`` with every rule name (definitions and references) given ``prefix``.

    Literals, character classes, repetition counts and comments are left alone."""
    out: list[str] = []
    i, n = 0, len(grammar)
    while i < n:
        c = grammar[i]
        if c in "\"[{":
            close = {'"': '"', "[": "]", "{": "}"}[c]
            j = i + 1
            while j < n and grammar[j] != close:
                j += 2 if grammar[j] == "\\" else 1
            out.append(grammar[i:j + 1])
            i = j + 1
        elif c == "#":
            j = grammar.find("\n", i)
            j = n if j < 0 else j
            out.append(grammar[i:j])
            i = j
        else:
            m = _NAME.match(grammar, i)
            if m:
                out.append(prefix + m.group(0))
                i = m.end()
            else:
                out.append(c)
                i += 1
    return "".join(out)


def _literal(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def call_grammar(fmt: CallFormat, arguments: Sequence[tuple[str, str]], *,
                 parallel: bool) -> str:
    """One grammar for a call to any of ``arguments`` (function name, GBNF of its
    arguments' schema with a ``root`` rule), written the way ``fmt`` writes calls."""
    if not arguments:
        raise InvalidRequestError("no function to call")
    rules: list[str] = []
    alternatives = []
    for i, (name, grammar) in enumerate(arguments):
        if not _NAME.fullmatch(name):
            raise InvalidRequestError(f"function name {name[:64]!r} must match [A-Za-z0-9_-]+")
        rules.append(rename_rules(grammar, f"t{i}-").strip())
        head = _literal('{"name": "' + name + '", "' + fmt.args_key + '": ')
        rules.append(f"tc-call{i} ::= {head} t{i}-root tc-sp \"}}\"")
        alternatives.append(f"tc-call{i}")
    rules.append("tc-call ::= " + " | ".join(alternatives))
    rules.append('tc-sp ::= " "?')
    if fmt.open_tag:
        rules.append(f'tc-block ::= {_literal(fmt.open_tag)} "\\n"? tc-call "\\n"? '
                     f'{_literal(fmt.close_tag)}')
        more = f' ("\\n"? tc-block){{0,{MAX_CALLS - 1}}}' if parallel else ""
        rules.append(f"root ::= tc-block{more}")
    else:  # a bare object: one call per answer
        rules.append("root ::= tc-call")
    return "\n".join(rules) + "\n"

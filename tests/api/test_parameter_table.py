"""The README's parameter table against OpenAI's request schemas and the box.

The table (one source of truth) says, per parameter and endpoint, honoured, refused,
no effect or `—` (not in that endpoint's schema). This reads the parameter names from the
installed `openai` package's request types, fails on any the table lacks, and sends each
row to a real box with a value that means something.
"""

from __future__ import annotations

import re
import typing
from pathlib import Path

import httpx
import pytest

from tests.conftest import LLM

ROOT = Path(__file__).resolve().parents[2]
HEADER = "| parameter | chat completions | completions | notes |"
STATUSES = {"honoured", "refused", "no effect", "—"}
ENDPOINTS = ("chat", "completions")

TOOL = {"type": "function", "function": {"name": "add", "description": "Add two integers.",
        "parameters": {"type": "object", "properties": {"a": {"type": "integer"},
                                                         "b": {"type": "integer"}},
                       "required": ["a", "b"]}}}
# A value for each parameter that means something, per endpoint where they differ.
VALUES: dict[str, object] = {
    "model": LLM, "messages": [{"role": "user", "content": "Hi"}], "prompt": "Hi",
    "max_tokens": 3, "max_completion_tokens": 3, "temperature": 0.7, "top_p": 0.5,
    "seed": 7, "stop": ["\n\n"], "stream": True, "stream_options": {"include_usage": True},
    "n": 2, "presence_penalty": 0.5, "frequency_penalty": 0.5, "repetition_penalty": 1.3,
    "logit_bias": {"1": -50}, "logprobs": True, "top_logprobs": 2, "echo": True,
    "response_format": {"type": "json_object"}, "tools": [TOOL], "tool_choice": "required",
    "parallel_tool_calls": False,
    "functions": [{"name": "add", "parameters": {"type": "object"}}],
    "function_call": "auto", "best_of": 3, "suffix": " and that was all.",
    "modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"},
    "prediction": {"type": "content", "content": "Hello there"},
    "web_search_options": {"search_context_size": "low"}, "reasoning_effort": "high",
    "verbosity": "low",
    "moderation": {"model": "omni-moderation-latest",
                   "policy": {"input": {"mode": "block"}}},
    "user": "user-1", "metadata": {"team": "a"}, "store": True, "service_tier": "flex",
    "prompt_cache_key": "k-1", "prompt_cache_retention": "24h",
    "prompt_cache_options": {"mode": "explicit", "ttl": "30m"},
    "safety_identifier": "s-1",
}
PER_ENDPOINT = {("completions", "logprobs"): 2}
NEEDS = {"top_logprobs": {"logprobs": True}, "tool_choice": {"tools": [TOOL]},
         "parallel_tool_calls": {"tools": [TOOL]}, "stream_options": {"stream": True}}


def readme_table() -> dict[str, dict[str, str]]:
    """{parameter: {"chat": status, "completions": status}} from the README."""
    lines = (ROOT / "README.md").read_text().splitlines()
    start = lines.index(HEADER) + 2
    table: dict[str, dict[str, str]] = {}
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        name = re.fullmatch(r"`([a-z_]+)`", cells[0])
        assert name, line
        assert {cells[1], cells[2]} <= STATUSES, line
        table[name.group(1)] = {"chat": cells[1], "completions": cells[2]}
    return table


def openai_parameters() -> dict[str, set[str]]:
    """Parameter names of OpenAI's request types in the installed `openai` package."""
    from openai.types import completion_create_params as completion
    from openai.types.chat import completion_create_params as chat

    def names(module) -> set[str]:
        return (set(typing.get_type_hints(module.CompletionCreateParamsBase))
                | set(typing.get_type_hints(module.CompletionCreateParamsStreaming)))

    return {"chat": names(chat), "completions": names(completion)}


TABLE = readme_table()


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_every_openai_parameter_is_in_the_readme_table(endpoint: str) -> None:
    params = openai_parameters()[endpoint]
    missing = sorted(p for p in params if TABLE.get(p, {}).get(endpoint, "—") == "—")
    assert not missing, f"README table lacks {endpoint} parameters: {missing}"
    assert set(TABLE) <= set(VALUES), "give the new rows a value in VALUES"


def _post(box, endpoint: str, **body: object) -> httpx.Response:
    base = ({"messages": VALUES["messages"]} if endpoint == "chat"
            else {"prompt": "The capital of France is"})
    path = "/v1/chat/completions" if endpoint == "chat" else "/v1/completions"
    return httpx.post(box.base_url + path, timeout=120,
                      headers={"Authorization": f"Bearer {box.api_key}"},
                      json={"model": LLM, "max_tokens": 6, "temperature": 0, **base, **body})


def _text(r: httpx.Response) -> str:
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    return choice["message"]["content"] if "message" in choice else choice["text"]


@pytest.mark.slow
@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_the_box_does_what_the_table_says(box, endpoint: str) -> None:
    plain = _text(_post(box, endpoint))
    wrong = []
    for name, row in TABLE.items():
        status = row[endpoint]
        value = PER_ENDPOINT.get((endpoint, name), VALUES[name])
        body = {**NEEDS.get(name, {}), name: value}
        if (name, endpoint) in (("messages", "chat"), ("prompt", "completions")):
            body = {}  # the base request carries it
        r = _post(box, endpoint, **body)
        if status in ("refused", "—"):
            message = r.json().get("error", {}).get("message", "") if r.content else ""
            if r.status_code != 400 or f"'{name}'" not in message:
                wrong.append((name, status, r.status_code, r.text[:200]))
        elif status == "no effect":
            if r.status_code != 200 or _text(r) != plain:
                wrong.append((name, status, r.status_code, r.text[:200]))
        elif r.status_code != 200:
            wrong.append((name, status, r.status_code, r.text[:200]))
    assert not wrong, wrong

"""LangChain against the box: `ChatOpenAI.bind_tools`, an agent built by langchain's
`create_agent` whose loop runs a tool, and `with_structured_output` by every method.

SmolLM2-135M is weak: these check contracts (calls parse against their schema, the
agent's loop runs the tool and ends, structured output parses), not answer quality.
`OpenAIEmbeddings` with its defaults (token arrays) is tested in
tests/api/test_embeddings_api.py; a named forced tool is in tests/api/test_tools_api.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, Field

from tests.conftest import LLM

pytestmark = pytest.mark.slow

langchain_openai = pytest.importorskip("langchain_openai")


class Weather(BaseModel):
    """The weather report asked for."""

    city: str = Field(description="city name")
    unit: str = Field(description="celsius or fahrenheit")


def _chat(box, **kw: Any):
    return langchain_openai.ChatOpenAI(model=LLM, base_url=box.base_url + "/v1",
                                       api_key=box.api_key, temperature=0, max_tokens=96,
                                       max_retries=0, **kw)


def test_bind_tools_with_any_tool_required(box) -> None:
    from langchain_core.tools import tool

    @tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @tool
    def shout(text: str) -> str:
        """Repeat text in capitals."""
        return text.upper()

    reply = _chat(box).bind_tools([add, shout], tool_choice="any",
                                     parallel_tool_calls=False).invoke("What is 2 plus 3?")
    assert len(reply.tool_calls) == 1 and reply.response_metadata["finish_reason"] == "tool_calls"
    for call in reply.tool_calls:
        tool_ = {"add": add, "shout": shout}[call["name"]]
        tool_.args_schema.model_validate(call["args"])  # arguments match the schema
        assert call["id"]


def test_an_agent_runs_its_tool_and_returns(box) -> None:
    from langchain.agents import create_agent
    from langchain.agents.middleware import wrap_model_call
    from langchain_core.messages import AIMessage, ToolMessage
    from langchain_core.tools import tool

    ran: list[tuple[int, int]] = []

    @tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        ran.append((a, b))
        return a + b

    @wrap_model_call
    def call_then_answer(request, handler):
        # the first turn must call the tool; once a result is back, the model answers
        answered = any(isinstance(m, ToolMessage) for m in request.messages)
        return handler(request.override(tool_choice="none" if answered else "any",
                                        model_settings={"parallel_tool_calls": False}))

    agent = create_agent(_chat(box), tools=[add], middleware=[call_then_answer])
    state = agent.invoke({"messages": [{"role": "user", "content": "What is 2 plus 3?"}]},
                         {"recursion_limit": 6})
    msgs = state["messages"]
    assert len(ran) == 1
    calls = [m for m in msgs if isinstance(m, AIMessage) and m.tool_calls]
    results = [m for m in msgs if isinstance(m, ToolMessage)]
    assert len(calls) == 1 and len(results) == 1
    assert results[0].tool_call_id == calls[0].tool_calls[0]["id"]
    assert results[0].content == str(sum(ran[0]))
    last = msgs[-1]
    assert isinstance(last, AIMessage) and not last.tool_calls and last.content


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_structured_output_parses_into_the_model(box, method: str) -> None:
    structured = _chat(box).with_structured_output(Weather, method=method)
    assert isinstance(structured.invoke("Weather in Rome, in celsius?"), Weather)


def test_structured_output_in_json_mode(box) -> None:
    schema = {"title": "Weather", "description": "The weather report asked for.",
              "type": "object", "properties": {"city": {"type": "string"}}}
    structured = _chat(box).with_structured_output(schema, method="json_mode")
    out = structured.invoke("Reply in JSON with the key city: the weather in Rome.")
    assert isinstance(out, dict)  # json_object mode: valid JSON, keys up to the model

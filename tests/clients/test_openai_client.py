"""The official `openai` package's helpers that sit above plain requests: `parse` with a
Pydantic model and the `stream` helper's assembled, parsed final message. Plain chat, streaming,
errors and tools are in tests/api/ (test_openai_api.py, test_tools_api.py, test_fidelity.py).
"""

from __future__ import annotations

import openai
import pytest
from pydantic import BaseModel

from tests.conftest import LLM

pytestmark = pytest.mark.slow


class City(BaseModel):
    name: str
    country: str


ASK = [{"role": "user", "content": "Name a city in France."}]


def test_parse_returns_the_pydantic_model(client: openai.OpenAI) -> None:
    r = client.chat.completions.parse(model=LLM, messages=ASK, response_format=City,
                                      temperature=0, max_tokens=48)
    msg = r.choices[0].message
    assert r.choices[0].finish_reason == "stop" and isinstance(msg.parsed, City)


def test_stream_helper_assembles_and_parses_the_answer(client: openai.OpenAI) -> None:
    with client.chat.completions.stream(model=LLM, messages=ASK, temperature=0, max_tokens=48,
                                        response_format=City,
                                        stream_options={"include_usage": True}) as stream:
        deltas = [e.delta for e in stream if e.type == "content.delta"]
        final = stream.get_final_completion()
    msg = final.choices[0].message
    assert deltas and "".join(deltas) == msg.content and isinstance(msg.parsed, City)
    assert final.usage is not None and 0 < final.usage.completion_tokens <= 48

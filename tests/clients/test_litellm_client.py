"""litellm against the box as an OpenAI-compatible provider (`openai/<model>`): a
completion, a stream, and errors mapped to litellm's own classes (its fallbacks and
retries key on them: a context overflow must be `ContextWindowExceededError`)."""

from __future__ import annotations

import os

import pytest

from tests.conftest import LLM

pytestmark = pytest.mark.slow

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch at import
litellm = pytest.importorskip("litellm")

HI = [{"role": "user", "content": "Say hello."}]


def _call(box, **kw):
    args = {"model": f"openai/{LLM}", "api_base": box.base_url + "/v1",
            "api_key": box.api_key, "messages": HI, "max_tokens": 8, "temperature": 0,
            "num_retries": 0, **kw}
    return litellm.completion(**args)


def test_completion(box) -> None:
    r = _call(box)
    assert r.choices[0].message.content
    assert r.choices[0].finish_reason in {"stop", "length"}
    assert r.usage.prompt_tokens > 0 and 0 < r.usage.completion_tokens <= 8


def test_streaming(box) -> None:
    chunks = list(_call(box, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and text == _call(box).choices[0].message.content  # greedy: same text
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)


def test_a_prompt_over_the_context_is_context_window_exceeded(box) -> None:
    too_long = [{"role": "user", "content": "word " * 5000}]  # the test box reads 2,048
    with pytest.raises(litellm.ContextWindowExceededError):
        _call(box, messages=too_long)


def test_a_bad_key_is_authentication_error(box) -> None:
    with pytest.raises(litellm.AuthenticationError):
        _call(box, api_key="sk-wrong")

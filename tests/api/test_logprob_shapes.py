"""Pure parts of logprobs, n and prompt lists: the request schemas and both response shapes."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from appliance.api.logprob_shapes import (
    LegacyLogprobs,
    chat_logprobs,
    merge_legacy,
    token_text,
)
from appliance.api.openai_schemas import ChatCompletionRequest, CompletionRequest
from engines.types import TokenLogprob

MSG = [{"role": "user", "content": "hi"}]


def entry(piece: bytes, logprob: float | None, *top: tuple[bytes, float]) -> TokenLogprob:
    return TokenLogprob(len(piece), piece, logprob,
                        tuple(TokenLogprob(len(p), p, lp) for p, lp in top))


def test_chat_shape_has_token_bytes_and_sorted_alternatives() -> None:
    out = chat_logprobs([entry(b" Paris", -0.1, (b" Paris", -0.1), (b" Lyon", -2.5))])
    assert out["refusal"] is None
    (tok,) = out["content"]
    assert tok == {"token": " Paris", "logprob": -0.1, "bytes": list(b" Paris"),
                   "top_logprobs": [
                       {"token": " Paris", "logprob": -0.1, "bytes": list(b" Paris")},
                       {"token": " Lyon", "logprob": -2.5, "bytes": list(b" Lyon")}]}


def test_a_partial_utf8_token_is_named_by_its_bytes() -> None:
    assert token_text("É".encode()[:1]) == "bytes:\\xc3"
    assert token_text("É".encode()) == "É"


def test_legacy_shape_counts_offsets_in_characters_across_chunks() -> None:
    shaper = LegacyLogprobs()
    first = shaper.shape([entry(b"The", None), entry(b" caf", -1.0, (b" cat", -0.5))])
    second = shaper.shape([entry("é".encode()[:1], -0.2), entry("é".encode()[1:], -0.01),
                           entry(b"!", -3.0)])
    merged = merge_legacy([first, second])
    assert merged is not None
    assert merged["tokens"] == ["The", " caf", "bytes:\\xc3", "bytes:\\xa9", "!"]
    assert merged["token_logprobs"] == [None, -1.0, -0.2, -0.01, -3.0]
    assert merged["top_logprobs"][0] is None  # nothing precedes the first token
    assert merged["top_logprobs"][1] == {" cat": -0.5, " caf": -1.0}  # sampled one added
    # "The caf" is 7 characters; "é" is one character made of two tokens
    assert merged["text_offset"] == [0, 3, 7, 7, 8]
    assert merge_legacy([]) is None


def test_chat_logprob_parameters() -> None:
    assert ChatCompletionRequest(model="m", messages=MSG).logprob_count() is None
    assert ChatCompletionRequest(model="m", messages=MSG, logprobs=True).logprob_count() == 0
    req = ChatCompletionRequest(model="m", messages=MSG, logprobs=True, top_logprobs=20)
    assert req.logprob_count() == 20
    for bad, named in (({"top_logprobs": 2}, "'top_logprobs'"),
                       ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
                       ({"echo": True}, "'echo'"), ({"n": 0}, "n"), ({"n": 129}, "n")):
        with pytest.raises(ValidationError) as exc:
            ChatCompletionRequest(model="m", messages=MSG, **bad)
        assert named in str(exc.value)
    nulls = ChatCompletionRequest(model="m", messages=MSG, logprobs=None, top_logprobs=None,
                                  n=None, repetition_penalty=None)
    assert (nulls.logprob_count(), nulls.n, nulls.repetition_penalty) == (None, 1, 1.0)


def test_completion_prompts_in_every_shape_openai_allows() -> None:
    def prompts(p: object) -> list:
        return CompletionRequest(model="m", prompt=p).prompts()

    assert prompts("a") == ["a"]
    assert prompts(["a", "b"]) == ["a", "b"]
    assert prompts([1, 2, 3]) == [[1, 2, 3]]
    assert prompts([[1, 2], [3]]) == [[1, 2], [3]]
    for bad in ([], [[]], [True, 2], [-1], ["a"] * 17, [[1]] * 17, [1, "a"], 3):
        with pytest.raises(ValidationError) as exc:
            CompletionRequest(model="m", prompt=bad)
        assert "prompt" in str(exc.value)
    for bad in ({"logprobs": 6}, {"logprobs": -1}, {"repetition_penalty": 0}):
        with pytest.raises(ValidationError):
            CompletionRequest(model="m", prompt="a", **bad)
    ok = CompletionRequest(model="m", prompt="a", logprobs=5, echo=True, n=4)
    assert (ok.logprobs, ok.echo, ok.n) == (5, True, 4)

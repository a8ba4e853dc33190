"""Several choices in one answer (pure): indices, usage counted once per prompt, echo held
back until the prompt's tokens arrive, and the merge of event streams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from appliance.api.choices import ChatChoices, CompletionChoices
from appliance.lifecycle import merged
from engines.types import Finished, GenerationEvent, PromptTokens, TextDelta, TokenLogprob


def tok(piece: bytes, lp: float | None) -> TokenLogprob:
    return TokenLogprob(len(piece), piece, lp, (TokenLogprob(len(piece), piece, lp),)
                        if lp is not None else ())


def test_chat_choices_count_the_prompt_once() -> None:
    shape = ChatChoices("m", n=2, logprobs=True)
    chunks = []
    for i, event in ((1, TextDelta("Hi", 1, (tok(b"Hi", -0.5),))),
                     (0, TextDelta("Yo", 1, (tok(b"Yo", -0.1),))),
                     (0, Finished("length", 10, 1, 0)),
                     (1, TextDelta("", 1, (tok(b"\n", -2.0),))),  # cut by a stop string
                     (1, Finished("stop", 10, 2, 10))):
        chunks += shape.feed(i, event)
    assert [c["choices"][0]["index"] for c in chunks] == [1, 1, 0, 0, 0, 1]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[1]["choices"][0]["logprobs"]["content"][0]["token"] == "Hi"
    answer = shape.answer()
    assert [c["message"]["content"] for c in answer["choices"]] == ["Yo", "Hi"]
    assert [c["finish_reason"] for c in answer["choices"]] == ["length", "stop"]
    assert len(answer["choices"][1]["logprobs"]["content"]) == 1  # the cut token is not text
    assert answer["usage"] == {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13,
                               "prompt_tokens_details": {"cached_tokens": 0}}


def test_completion_choices_are_prompt_major_and_echo_waits_for_the_prompt() -> None:
    shape = CompletionChoices("m", ["ab", None], n=2, echo=True, logprobs=True)
    prompt2 = PromptTokens((tok(b"x", None), tok(b"y", -1.0)))
    out = shape.feed(3, TextDelta("!", 1, (tok(b"!", -0.3),)))  # before its prompt's echo
    assert out == []
    out = shape.feed(2, prompt2)
    assert [(c["choices"][0]["index"], c["choices"][0]["text"]) for c in out] == [
        (3, "xy"), (3, "!")]
    assert out[0]["choices"][0]["logprobs"]["token_logprobs"] == [None, -1.0]
    assert out[1]["choices"][0]["logprobs"]["text_offset"] == [2]
    shape.feed(0, PromptTokens((tok(b"a", None), tok(b"b", -0.2))))
    for i in range(4):
        shape.feed(i, Finished("length", 2, 1 if i == 3 else 0, 2 if i % 2 else 0))
    answer = shape.answer()
    assert [c["text"] for c in answer["choices"]] == ["ab", "ab", "xy", "xy!"]
    assert answer["choices"][3]["logprobs"]["tokens"] == ["x", "y", "!"]
    assert answer["choices"][3]["logprobs"]["text_offset"] == [0, 1, 2]
    assert answer["usage"]["prompt_tokens"] == 4 and answer["usage"]["completion_tokens"] == 1


async def _events(*events: GenerationEvent, fail: Exception | None = None
                  ) -> AsyncIterator[GenerationEvent]:
    for e in events:
        await asyncio.sleep(0)
        yield e
    if fail is not None:
        raise fail


def test_merged_streams_keep_each_streams_order_and_raise_the_first_error() -> None:
    async def collect(*streams: AsyncIterator[GenerationEvent]) -> list:
        return [x async for x in merged(streams)]

    a = [TextDelta("a1", 1), TextDelta("a2", 1), Finished("stop", 1, 2)]
    b = [TextDelta("b1", 1), Finished("stop", 1, 1)]
    got = asyncio.run(collect(_events(*a), _events(*b)))
    assert [e for i, e in got if i == 0] == a and [e for i, e in got if i == 1] == b
    with pytest.raises(RuntimeError):
        asyncio.run(collect(_events(*a), _events(TextDelta("x", 1), fail=RuntimeError("x"))))

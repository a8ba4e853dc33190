"""Logprobs, n, prompt lists, echo and repetition_penalty through the official `openai`
client against a real box (SmolLM2, 8 slots): the shapes clients parse, the numbers the
model gives, and a 400 naming each parameter out of bounds."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.conftest import LLM

pytestmark = pytest.mark.slow
ASK = [{"role": "user", "content": "What is the capital of France?"}]


def test_chat_logprobs_are_the_models_top_choices(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model=LLM, messages=ASK, temperature=0, max_tokens=8,
                                       logprobs=True, top_logprobs=3)
    choice = r.choices[0]
    content = choice.logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert b"".join(bytes(t.bytes) for t in content).decode() == choice.message.content
    for t in content:
        assert t.logprob <= 0 and len(t.top_logprobs) == 3
        tops = [x.logprob for x in t.top_logprobs]
        assert tops == sorted(tops, reverse=True)
        assert t.top_logprobs[0].token == t.token  # greedy picks the likeliest
    plain = client.chat.completions.create(model=LLM, messages=ASK, temperature=0, max_tokens=8)
    assert plain.choices[0].logprobs is None
    assert plain.choices[0].message.content == choice.message.content

    stream = client.chat.completions.create(model=LLM, messages=ASK, temperature=0,
                                            max_tokens=8, logprobs=True, top_logprobs=3,
                                            stream=True)
    streamed = [t for chunk in stream for c in chunk.choices
                if c.logprobs and c.logprobs.content for t in c.logprobs.content]
    assert [(t.token, t.logprob) for t in streamed] == [(t.token, t.logprob) for t in content]


def test_n_choices_share_the_prompt(client: openai.OpenAI) -> None:
    one = client.chat.completions.create(model=LLM, messages=ASK, temperature=0, max_tokens=6)
    r = client.chat.completions.create(model=LLM, messages=ASK, temperature=0, max_tokens=6,
                                       n=3)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert {c.message.content for c in r.choices} == {one.choices[0].message.content}
    assert r.usage.prompt_tokens == one.usage.prompt_tokens  # counted once
    assert r.usage.completion_tokens == 3 * one.usage.completion_tokens
    seeded = client.chat.completions.create(model=LLM, messages=ASK, temperature=1.0,
                                            max_tokens=12, n=3, seed=5)
    again = client.chat.completions.create(model=LLM, messages=ASK, temperature=1.0,
                                           max_tokens=12, n=3, seed=5)
    texts = [c.message.content for c in seeded.choices]
    assert texts == [c.message.content for c in again.choices]  # seed + index: repeatable
    assert len(set(texts)) > 1  # and the choices differ

    stream = client.chat.completions.create(model=LLM, messages=ASK, temperature=0,
                                            max_tokens=6, n=2, stream=True,
                                            stream_options={"include_usage": True})
    parts: dict[int, str] = {}
    finished = set()
    usage = None
    for chunk in stream:
        usage = chunk.usage or usage
        for c in chunk.choices:
            parts[c.index] = parts.get(c.index, "") + (c.delta.content or "")
            if c.finish_reason:
                finished.add(c.index)
    assert parts == {0: one.choices[0].message.content, 1: one.choices[0].message.content}
    assert finished == {0, 1} and usage.prompt_tokens == one.usage.prompt_tokens


def test_the_seats_usage_row_counts_a_shared_prompt_once(box) -> None:
    from tests.api.test_licensing_api import admin, new_seat, oa

    seat_id, key = new_seat(box, "seat-n")
    try:
        r = oa(box, key).chat.completions.create(model=LLM, messages=ASK, temperature=0,
                                                 max_tokens=4, n=3)
        row = httpx.get(box.base_url + "/v1/usage",
                        headers={"Authorization": f"Bearer {key}"}).json()["data"][0]
        assert (row["tokens_in"], row["tokens_out"]) == (r.usage.prompt_tokens,
                                                         r.usage.completion_tokens)
        assert r.usage.completion_tokens == 3 * 4  # three choices of four tokens each
    finally:
        admin(box, "DELETE", f"/admin/seats/{seat_id}")


def test_prompt_lists_and_token_arrays_are_prompt_major(client: openai.OpenAI) -> None:
    def text(prompt: object, **kw: object) -> list[str]:
        r = client.completions.create(model=LLM, prompt=prompt, temperature=0, max_tokens=5,
                                      **kw)
        assert [c.index for c in r.choices] == list(range(len(r.choices)))
        return [c.text for c in r.choices]

    a, b = text("The sky is")[0], text("Once upon a time")[0]
    assert text(["The sky is", "Once upon a time"], n=2) == [a, a, b, b]


def test_token_array_prompts_match_text_prompts(gguf_path, client: openai.OpenAI) -> None:
    tokens = _tokens(gguf_path, "The sky is")
    a = client.completions.create(model=LLM, prompt="The sky is", temperature=0, max_tokens=5)
    t = client.completions.create(model=LLM, prompt=tokens, temperature=0, max_tokens=5)
    assert t.choices[0].text == a.choices[0].text
    both = client.completions.create(model=LLM, prompt=[tokens, tokens], temperature=0,
                                     max_tokens=5)
    assert [c.text for c in both.choices] == [a.choices[0].text] * 2
    echoed = client.completions.create(model=LLM, prompt=tokens, echo=True, max_tokens=1)
    assert echoed.choices[0].text.startswith("The sky is")
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model=LLM, prompt=[1, 2, 10_000_000], max_tokens=1)
    assert "prompt token id 10000000" in exc.value.body["message"]


def _tokens(gguf_path, text: str) -> list[int]:
    """Token ids of ``text`` as the box reads them (the same GGUF's vocabulary)."""
    from engines.llm.lowlevel import Model

    model = Model(gguf_path, n_gpu_layers=0)
    try:
        return model.tokenize(text, add_special=True, parse_special=True)
    finally:
        model.close()


def test_echo_and_legacy_logprobs(client: openai.OpenAI) -> None:
    prompt = "The sky is blue because"
    plain = client.completions.create(model=LLM, prompt=prompt, temperature=0, max_tokens=4)
    r = client.completions.create(model=LLM, prompt=prompt, temperature=0, max_tokens=4,
                                  echo=True, logprobs=2)
    c = r.choices[0]
    assert c.text == prompt + plain.choices[0].text
    lp = c.logprobs
    n_prompt = r.usage.prompt_tokens
    assert len(lp.tokens) == n_prompt + r.usage.completion_tokens
    assert "".join(lp.tokens) == c.text
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert all(x <= 0 for x in lp.token_logprobs[1:])
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
    assert all(c.text[o:].startswith(t) for o, t in zip(lp.text_offset, lp.tokens, strict=True))
    for token, top in zip(lp.tokens[n_prompt:], lp.top_logprobs[n_prompt:], strict=True):
        assert token in top and 2 <= len(top) <= 3  # the sampled token is always there
    echo_only = client.completions.create(model=LLM, prompt=prompt, max_tokens=1, echo=True)
    assert echo_only.choices[0].text.startswith(prompt)
    assert echo_only.choices[0].logprobs is None

    stream = client.completions.create(model=LLM, prompt=prompt, temperature=0, max_tokens=4,
                                       echo=True, logprobs=2, stream=True)
    chunks = [ch.choices[0] for ch in stream if ch.choices]
    assert "".join(ch.text for ch in chunks) == c.text
    streamed = [t for ch in chunks if ch.logprobs for t in ch.logprobs.tokens]
    assert streamed == lp.tokens


def test_repetition_penalty_is_honoured(client: openai.OpenAI) -> None:
    loop = "one two one two one two one two one two"
    plain = client.completions.create(model=LLM, prompt=loop, temperature=0, max_tokens=16)
    penalised = client.completions.create(model=LLM, prompt=loop, temperature=0, max_tokens=16,
                                          extra_body={"repetition_penalty": 1.8})
    assert penalised.choices[0].text != plain.choices[0].text


@pytest.mark.parametrize("route,extra,named", [
    ("chat/completions", {"n": 9}, "'n'"),  # the box's test model has 8 slots
    ("chat/completions", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ("chat/completions", {"top_logprobs": 2}, "'top_logprobs'"),
    ("chat/completions", {"echo": True}, "'echo'"),
    ("completions", {"logprobs": 6}, "logprobs"),
    ("completions", {"n": 9}, "'n'"),
    ("completions", {"prompt": ["a"] * 17}, "prompt"),
    ("completions", {"prompt": ["a"] * 9, "n": 2}, "'n'"),
    ("completions", {"prompt": [[]]}, "prompt"),
    ("completions", {"repetition_penalty": 0}, "repetition_penalty"),
])
def test_out_of_bounds_are_refused_by_name(box, route: str, extra: dict, named: str) -> None:
    body = {"model": LLM, "max_tokens": 1, **extra}
    if route == "chat/completions":
        body.setdefault("messages", ASK)
    else:
        body.setdefault("prompt", "hi")
    r = httpx.post(f"{box.base_url}/v1/{route}", json=body, timeout=60,
                   headers={"Authorization": f"Bearer {box.api_key}"})
    assert r.status_code == 400, r.text
    assert named in r.json()["error"]["message"]

"""Logprobs, echo and forks on the real SmolLM2 GGUF, in this process and across the worker
boundary: the numbers are the model's own (greedy picks the top-1, every logprob <= 0, the
alternatives sorted, a prompt position's logprob equals the generated one at the same
place), and requests with one prompt read it once."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from engines.base import LLMEngine
from engines.errors import InvalidRequestError
from engines.types import (
    Finished,
    GenerationRequest,
    PromptTokens,
    Sampling,
    TextDelta,
    TokenLogprob,
)
from tests.engines.llm.test_batched import KINDS, THREADS, Collector, make_engine, prompt, refusal

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=KINDS)
def engine(request: pytest.FixtureRequest, gguf_path: Path) -> Iterator[LLMEngine]:
    eng = make_engine(request.param, gguf_path, n_ctx=4 * 512, slots=4, n_threads=THREADS,
                      prefill_chunk=64)
    yield eng
    eng.close()


def run(engine: LLMEngine, tokens: tuple[int, ...], logprobs: int | None = None,
        echo: bool = False, **sampling: object) -> Collector:
    sink = Collector()
    engine.submit(GenerationRequest(tokens, Sampling(**sampling),  # type: ignore[arg-type]
                                    logprobs=logprobs, echo=echo), sink)
    return sink


def generated(sink: Collector) -> list[TokenLogprob]:
    return [lp for e in sink.events if isinstance(e, TextDelta) for lp in e.logprobs]


def check_alternatives(lp: TokenLogprob, k: int) -> None:
    assert lp.logprob is not None and lp.logprob <= 0.0
    assert len(lp.top) == k
    tops = [t.logprob for t in lp.top]
    assert all(t is not None and t <= 0.0 for t in tops)
    assert tops == sorted(tops, reverse=True)  # type: ignore[type-var]
    if lp.token in [t.token for t in lp.top]:
        assert next(t.logprob for t in lp.top if t.token == lp.token) == lp.logprob
    else:  # a token outside the k likeliest is less likely than all of them
        assert lp.logprob <= tops[-1]  # type: ignore[operator]


def test_greedy_logprobs_are_the_models_top_choice(engine: LLMEngine) -> None:
    sink = run(engine, prompt(engine, "What is the capital of France?"), logprobs=5,
               temperature=0.0, max_tokens=8).wait()
    end = sink.end
    assert isinstance(end, Finished)
    lps = generated(sink)
    assert len(lps) == end.completion_tokens
    for lp in lps:
        check_alternatives(lp, 5)
        assert lp.top[0].token == lp.token and lp.top[0].logprob == lp.logprob
    assert b"".join(lp.piece for lp in lps).decode() == sink.text


def test_logprobs_are_the_raw_distribution_not_the_biased_one(engine: LLMEngine) -> None:
    """Documented choice: logit_bias moves the draw, not the reported probabilities."""
    p = prompt(engine, "Name a colour.")
    plain = generated(run(engine, p, logprobs=3, temperature=0.0, max_tokens=1).wait())[0]
    forced = plain.top[2].token  # the third likeliest, forced by a huge bias
    biased = generated(run(engine, p, logprobs=3, temperature=0.0, max_tokens=1,
                           logit_bias=((forced, 100.0),)).wait())[0]
    assert biased.token == forced
    assert biased.logprob == pytest.approx(plain.top[2].logprob, abs=1e-4)
    assert biased.top[0].token == plain.token


def test_logprobs_survive_a_stop_string(engine: LLMEngine) -> None:
    p = prompt(engine, "Name a famous painter.")
    full = run(engine, p, temperature=0.0, max_tokens=24).wait().text
    stop = full.split()[2]
    sink = run(engine, p, logprobs=0, temperature=0.0, max_tokens=24, stop=(stop,)).wait()
    end = sink.end
    assert isinstance(end, Finished) and end.finish_reason == "stop"
    lps = generated(sink)
    assert len(lps) == end.completion_tokens and all(lp.top == () for lp in lps)


def test_echo_sends_the_prompt_first_with_the_same_numbers_as_generation(
        engine: LLMEngine) -> None:
    text = "The sky is blue because"
    tokens = tuple(engine.tokenize(text))
    first = generated(run(engine, tokens, logprobs=2, temperature=0.0, max_tokens=1).wait())[0]
    plain = run(engine, tokens, echo=True, temperature=0.0, max_tokens=2).wait()
    echoed = plain.events[0]
    assert isinstance(echoed, PromptTokens)
    assert [t.token for t in echoed.tokens] == list(tokens)
    assert b"".join(t.piece for t in echoed.tokens).decode() == text
    assert all(t.logprob is None for t in echoed.tokens)

    longer = (*tokens, first.token)
    sink = run(engine, longer, logprobs=2, echo=True, temperature=0.0, max_tokens=2).wait()
    echoed = sink.events[0]
    assert isinstance(echoed, PromptTokens) and len(echoed.tokens) == len(longer)
    assert echoed.tokens[0].logprob is None and echoed.tokens[0].top == ()
    for lp in echoed.tokens[1:]:
        check_alternatives(lp, 2)
    # the logits at the last prompt position are the ones the first token came from
    assert echoed.tokens[-1].logprob == pytest.approx(first.logprob, abs=1e-3)
    assert [t.token for t in echoed.tokens[-1].top] == [t.token for t in first.top]
    assert isinstance(sink.end, Finished) and sink.end.cached_tokens == 0


def test_identical_prompts_read_once_and_match_the_solo_run(engine: LLMEngine) -> None:
    p = prompt(engine, "Write a haiku about the sea.")
    for sampling in ({"temperature": 0.0}, {"temperature": 0.9, "seed": 11}):
        solo = run(engine, p, max_tokens=10, **sampling).wait()  # type: ignore[arg-type]
        forks_before = engine.stats()["prefix_forks"]
        sinks = [run(engine, p, logprobs=1, max_tokens=10, **sampling)  # type: ignore[arg-type]
                 for _ in range(3)]
        for sink in sinks:
            sink.wait()
            assert sink.text == solo.text  # same logits, same seed: the same draw
            lps = generated(sink)
            assert lps and all(lp.logprob is not None and lp.logprob <= 0 for lp in lps)
        cached = sorted(s.end.cached_tokens for s in sinks)  # type: ignore[union-attr]
        assert cached[1:] == [len(p), len(p)], cached  # two of three read nothing
        assert engine.stats()["prefix_forks"] - forks_before >= 2


def test_the_same_prompt_again_resumes_from_the_slot_it_left(engine: LLMEngine) -> None:
    p = prompt(engine, "Tell me a joke about cats.")
    first = run(engine, p, temperature=0.0, max_tokens=12).wait()
    # an earlier test's chat may have left the system turn: never the whole prompt
    assert first.end.cached_tokens < len(p)  # type: ignore[union-attr]
    for tokens in (12, 1):  # longer or shorter than the run it resumes from
        again = run(engine, p, temperature=0.0, max_tokens=tokens).wait()
        assert again.end.cached_tokens == len(p)  # type: ignore[union-attr]
        assert again.text == first.text if tokens == 12 else first.text.startswith(again.text)


def test_logprobs_out_of_range_are_refused(engine: LLMEngine) -> None:
    p = prompt(engine, "hi")
    for bad in (-1, 21):
        err = refusal(engine, GenerationRequest(p, Sampling(max_tokens=1), logprobs=bad))
        assert isinstance(err, InvalidRequestError) and "logprobs" in str(err)


def test_reported_numbers_come_from_the_full_distribution(engine: LLMEngine,
                                                         gguf_path: Path) -> None:
    """Read the logits of the same prompt with the low-level API: exp of every logprob
    sums to 1, and the engine reported the top of exactly that distribution."""
    from engines.llm.logprobs import log_softmax, top_tokens
    from engines.llm.lowlevel import Batch, Context, ContextConfig, Model

    tokens = tuple(engine.tokenize("Hello, my name is"))
    reported = generated(run(engine, tokens, logprobs=4, temperature=0.0, max_tokens=1).wait())
    model = Model(gguf_path, n_gpu_layers=0)
    ctx = Context(model, ContextConfig(n_ctx=256, n_batch=64, n_seq_max=1, n_threads=THREADS))
    batch = Batch(64)
    try:
        for pos, t in enumerate(tokens):
            batch.add(t, pos, 0, pos == len(tokens) - 1)
        ctx.decode(batch)
        lp = log_softmax(ctx.logits(len(tokens) - 1))
    finally:
        batch.close()
        ctx.close()
        model.close()
    assert math.isclose(float(sum(math.exp(v) for v in lp)), 1.0, rel_tol=1e-6)
    assert [t for t, _ in top_tokens(lp, 4)] == [t.token for t in reported[0].top]
    assert reported[0].logprob == pytest.approx(float(lp.max()), abs=1e-3)

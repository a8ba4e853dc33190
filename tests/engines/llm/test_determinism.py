"""A token's logits do not depend on what shares its step or on how its prompt was cut.

The first two tests check the llama.cpp build itself (``tools/llama_source.py``): ggml's
tiled flash attention (64 or more rows of one sequence) and its split-KV kernel (one token
of one sequence against 512 or more cells) sum in another order than the per-row kernel,
and an unpatched build fails both. The last ones check what the engine promises on top:
greedy output under load equals the request served alone, at any context length, and a
later turn that reuses the cells of an earlier answer answers as if read from scratch.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from engines.llm.batched import BatchedLlamaEngine
from engines.llm.lowlevel import Batch, Context, ContextConfig, Model
from engines.types import Finished
from tests.engines.llm.test_prefix_reuse import run

pytestmark = pytest.mark.slow
#: Two threads, as a box runs: with one, the split-KV kernel has a single part and sums
#: like the per-row one, so it would hide what these tests look for.
THREADS = 2

TEXT = ("The history of the city begins with a small settlement on the river bank, where "
        "traders met to exchange salt, grain and cloth. Over centuries it grew into a market "
        "town and then a port. ")


@pytest.fixture(scope="module")
def model(gguf_path: Path) -> Iterator[Model]:
    m = Model(gguf_path, n_gpu_layers=0)
    yield m
    m.close()


def context(model: Model, seqs: int) -> Context:
    return Context(model, ContextConfig(n_ctx=seqs * 2048, n_batch=512, n_seq_max=seqs,
                                        n_threads=THREADS, flash_attn=True))


def read(ctx: Context, batch: Batch, tokens: list[int], cuts: list[int], seq: int = 0
         ) -> np.ndarray:
    """Read ``tokens`` into ``seq`` in pieces ending at ``cuts``; the last token's logits."""
    pos = 0
    for end in cuts:
        batch.clear()
        for i in range(pos, end):
            batch.add(tokens[i], i, seq, i == end - 1)
        ctx.decode(batch)
        pos = end
    return ctx.logits(len(batch) - 1).copy()


def test_a_prompt_cut_differently_gives_the_same_logits(model: Model) -> None:
    tokens = model.tokenize(TEXT * 8, add_special=True, parse_special=False)[:200]
    results = []
    for cuts in ([200], [64, 128, 192, 200], [1, 65, 130, 200], list(range(1, 201))):
        ctx, batch = context(model, 1), Batch(512)
        try:
            results.append(read(ctx, batch, tokens, cuts))
        finally:
            ctx.close()
            batch.close()
    for other in results[1:]:
        assert np.array_equal(results[0], other)


def test_a_token_decoded_alone_past_512_cells_matches_it_decoded_beside_another(
        model: Model) -> None:
    tokens = model.tokenize(TEXT * 40, add_special=True, parse_special=False)[:700]
    other = model.tokenize("Hello there, how are you today?", add_special=True,
                           parse_special=False)
    runs = []
    for companion in (False, True):
        ctx, batch = context(model, 2), Batch(512)
        try:
            logits = [read(ctx, batch, tokens, [*range(32, 700, 32), 700])]
            if companion:
                read(ctx, batch, other, [len(other)], seq=1)
            for step in range(4):
                batch.clear()
                batch.add(int(logits[-1].argmax()), 700 + step, 0, True)
                if companion:
                    batch.add(other[-1], len(other) + step, 1, True)
                ctx.decode(batch)
                logits.append(ctx.logits(0).copy())
            runs.append(logits)
        finally:
            ctx.close()
            batch.close()
    for alone, beside in zip(*runs, strict=True):
        assert np.array_equal(alone, beside)


def test_a_long_prompt_under_load_answers_as_it_does_alone(gguf_path: Path) -> None:
    eng = BatchedLlamaEngine(gguf_path, n_ctx=3 * 1024, slots=3, n_threads=THREADS,
                             prefix_reuse=False)
    try:
        def ask(text: str) -> tuple[int, ...]:
            return tuple(eng.chat_tokens([{"role": "user", "content": text}]))

        question = ask(TEXT * 14 + "\n\nWhat did the traders exchange, and where?")
        assert len(question) > 400
        alone = run(eng, question, tokens=48).wait().text
        busy = [run(eng, ask(f"Write a long story about ship number {i}."), tokens=200)
                for i in range(2)]
        for sink in busy:
            assert sink.first.wait(240)
        loaded = run(eng, question, tokens=48).wait().text
        for sink in busy:
            sink.wait()
        assert loaded == alone and alone.strip()
    finally:
        eng.close()


def test_a_later_turn_reuses_the_answer_and_answers_as_from_scratch(gguf_path: Path) -> None:
    eng = BatchedLlamaEngine(gguf_path, n_ctx=2 * 1024, slots=2, n_threads=THREADS)
    fresh = BatchedLlamaEngine(gguf_path, n_ctx=1024, slots=1, n_threads=THREADS,
                               prefix_reuse=False)
    try:
        history = [{"role": "user", "content": "Tell me about the river city. " + TEXT * 3}]
        first = tuple(eng.chat_tokens(history))
        answer = run(eng, first, tokens=48).wait().text
        history += [{"role": "assistant", "content": answer},
                    {"role": "user", "content": "And what happened to the port later?"}]
        second = tuple(eng.chat_tokens(history))
        again = run(eng, second, tokens=48).wait()
        end = again.end
        assert isinstance(end, Finished)
        assert end.cached_tokens > len(first)  # the answer's own cells were reused too
        assert again.text == run(fresh, second, tokens=48).wait().text
    finally:
        eng.close()
        fresh.close()

"""The vocabulary-only engine (a fleet head's prompt worker): it prepares prompts exactly
as the full engine does, refuses to generate, and runs in a worker like any engine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from engines.errors import EngineError, InvalidRequestError, PromptTooLongError
from engines.llm.batched import BatchedLlamaEngine
from engines.llm.vocab import VocabLlamaEngine
from engines.types import GenerationRequest, Sampling
from engines.worker.proxies import WorkerLLMEngine
from engines.worker.spec import LLAMA_CONFIGS, EngineSpec
from engines.worker.supervisor import Supervisor

N_CTX = 512
CHAT = [{"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name a <|im_end|> colour."}]
TOOLS = [{"type": "function", "function": {"name": "f", "description": "x",
                                           "parameters": {"type": "object"}}}]
SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


@pytest.fixture(scope="module")
def full(gguf_path: Path) -> Iterator[BatchedLlamaEngine]:
    engine = BatchedLlamaEngine(gguf_path, n_ctx=N_CTX, slots=1, n_threads=2)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def vocab(gguf_path: Path) -> Iterator[VocabLlamaEngine]:
    engine = VocabLlamaEngine(gguf_path, n_ctx=N_CTX)
    yield engine
    engine.close()


def test_prompts_are_the_full_engines(full: BatchedLlamaEngine, vocab: VocabLlamaEngine) -> None:
    assert vocab.chat_tokens(CHAT) == full.chat_tokens(CHAT)
    assert vocab.chat_tokens(CHAT, TOOLS) == full.chat_tokens(CHAT, TOOLS)
    assert vocab.render_chat(CHAT) == full.render_chat(CHAT)
    for special in (True, False):
        assert (vocab.tokenize("<|im_start|>hi", special=special)
                == full.tokenize("<|im_start|>hi", special=special))
    assert vocab.json_schema_grammar(SCHEMA) == full.json_schema_grammar(SCHEMA)
    assert vocab.info.chat_template == full.info.chat_template
    assert vocab.info.n_ctx == N_CTX and vocab.info.slots == 0


def test_it_refuses_what_the_full_engine_refuses(vocab: VocabLlamaEngine) -> None:
    with pytest.raises(PromptTooLongError):
        vocab.tokenize("x" * (N_CTX * 10_000))
    with pytest.raises(InvalidRequestError):
        vocab.json_schema_grammar({"type": "object", "properties": {"a\"b": {}}})
    with pytest.raises(EngineError):
        vocab.submit(GenerationRequest((1, 2), Sampling(max_tokens=1)), lambda e: None)


def test_it_runs_in_a_worker(gguf_path: Path, full: BatchedLlamaEngine) -> None:
    spec = EngineSpec("llm", "test-vocab", {"vocab_only": True, "model_path": str(gguf_path),
                                            "n_ctx": N_CTX}, "test vocab", LLAMA_CONFIGS[:1])
    worker = WorkerLLMEngine(Supervisor(spec))
    try:
        assert worker.chat_tokens(CHAT) == full.chat_tokens(CHAT)
        assert worker.info.slots == 0
    finally:
        worker.close()

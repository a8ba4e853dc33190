"""A language model's vocabulary and chat template without its weights: prepares prompts
(token ids, grammars) exactly as the model's engine does, and never generates.

A fleet head runs one in a prompt worker per model, so a request is tokenised next to the
API (one pipe round trip) instead of by a call to a replica on another box; llama.cpp's
tokeniser still runs in a worker process, never in the API's.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

from engines.base import EventSink, GenerationHandle, LLMEngine
from engines.errors import EngineError
from engines.llm.lowlevel import Model
from engines.llm.prompts import PromptBuilder, PromptMethods
from engines.types import GenerationRequest, LLMInfo


class VocabLlamaEngine(PromptMethods, LLMEngine):
    """The prompt half of a GGUF model; ``n_ctx`` is the context a replica gives one
    request (prompts longer than it are refused before tokenising, as there)."""

    def __init__(self, model_path: Path, *, n_ctx: int) -> None:
        self._model = Model(Path(model_path), n_gpu_layers=0, vocab_only=True)
        self._lock = threading.Lock()
        self._prompts = PromptBuilder(self._model, n_ctx, self._lock)
        self._info = LLMInfo(n_ctx=n_ctx, n_ctx_train=self._model.n_ctx_train,
                             n_embd=self._model.n_embd, backend="cpu", n_gpu_layers=0,
                             slots=0, chat_template=self._prompts.chat_template)

    def submit(self, request: GenerationRequest, sink: EventSink) -> GenerationHandle:
        raise EngineError("a vocabulary-only model does not generate")

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        raise EngineError("a vocabulary-only model does not embed")

    def stats(self) -> dict[str, float]:
        return {}

    def close(self) -> None:
        with self._lock:
            self._model.close()

"""A sentence-embedding model (a BERT-style encoder in GGUF) served by llama.cpp.

It is an ``LLMEngine`` so that it runs in the same supervised LLM worker as the chat
models, but it only embeds: the generation methods refuse with InvalidRequestError (a 400
that says to use /v1/embeddings). Inputs are packed into decodes of ``batch_tokens``
tokens (many short inputs per decode), so one request's memory is bounded by that setting
however many inputs it holds; each input alone may be as long as the model's training
context (512 tokens for MiniLM), and a longer one is refused naming its index.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path

from engines.base import EventSink, GenerationHandle, LLMEngine
from engines.errors import (
    EngineClosedError,
    InvalidRequestError,
    PromptTooLongError,
)
from engines.llm.batched import _default_threads
from engines.llm.lowlevel import Embedder, Model, gpu_offload_supported
from engines.llm.prompts import MAX_CHARS_PER_TOKEN
from engines.types import GenerationRequest, LLMInfo

log = logging.getLogger(__name__)


class LlamaEmbeddingEngine(LLMEngine):
    """Embeddings only, from a GGUF encoder: ``pooling`` (mean or cls), L2-normalised."""

    def __init__(self, model_path: Path, *, n_threads: int | None = None,
                 n_gpu_layers: int | None = None, use_extra_bufts: bool = True,
                 batch_tokens: int = 2048, max_seqs: int = 64, pooling: str = "mean",
                 name: str | None = None) -> None:
        if n_gpu_layers is None:
            n_gpu_layers = -1 if gpu_offload_supported() else 0
        self._model = Model(Path(model_path), n_gpu_layers=n_gpu_layers,
                            use_extra_bufts=use_extra_bufts)
        try:
            n_ctx = self._model.n_ctx_train
            self._embedder = Embedder(self._model, n_ctx=max(batch_tokens, n_ctx),
                                      n_threads=n_threads or _default_threads(),
                                      n_seq=max_seqs, pooling=pooling)
        except BaseException:
            self._model.close()
            raise
        self._name = name or self._model.path.stem
        self._lock = threading.Lock()  # one decode at a time; close waits for it
        self._info = LLMInfo(
            n_ctx=n_ctx, n_ctx_train=n_ctx, n_embd=self._model.n_embd,
            backend="cuda" if n_gpu_layers != 0 and gpu_offload_supported() else "cpu",
            n_gpu_layers=n_gpu_layers, slots=1, chat_template=None, purpose="embeddings")
        self._stats = {"embed_requests_total": 0.0, "embed_inputs_total": 0.0,
                       "embed_tokens_total": 0.0}
        log.info("loaded embedding model %s: %d dims, %d tokens per input, %s pooling",
                 self._model.path.name, self._model.n_embd, n_ctx, pooling)

    @property
    def info(self) -> LLMInfo:
        return self._info

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        if len(text) > self._info.n_ctx * MAX_CHARS_PER_TOKEN:
            raise PromptTooLongError(len(text), self._info.n_ctx)
        with self._lock:
            if self._model.ptr is None:
                raise EngineClosedError("the model is unloaded")
            return self._model.tokenize(text, add_special=True, parse_special=special)

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        with self._lock:
            if self._model.ptr is None:
                raise EngineClosedError("the model is unloaded")
            ids = self._embedder.input_ids(self._model, texts, MAX_CHARS_PER_TOKEN)
            vectors = self._embedder.embed_ids(ids)
            self._stats["embed_requests_total"] += 1
            self._stats["embed_inputs_total"] += len(ids)
            self._stats["embed_tokens_total"] += sum(len(t) for t in ids)
            return vectors

    # --- generation is not what this model is for --------------------------------
    def _refuse(self) -> InvalidRequestError:
        return InvalidRequestError(
            f"model '{self._name}' is an embedding model: it cannot chat or "
            "complete text; use it with /v1/embeddings")

    def render_chat(self, messages: Sequence[dict[str, str]]) -> str:
        raise self._refuse()

    def chat_tokens(self, messages: Sequence[dict[str, str]]) -> list[int]:
        raise self._refuse()

    def json_schema_grammar(self, schema: dict) -> str:
        raise self._refuse()

    def submit(self, request: GenerationRequest, sink: EventSink) -> GenerationHandle:
        raise self._refuse()

    def stats(self) -> dict[str, float]:
        return dict(self._stats)

    def close(self) -> None:
        with self._lock:
            if self._model.ptr is not None:
                self._embedder.close()
                self._model.close()

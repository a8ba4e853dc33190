"""One-request-at-a-time LLM engine on llama-cpp-python's high-level ``Llama`` object.

A single worker thread serves a FIFO queue; the continuous-batching engine
(``engines.llm.batched``) replaces it behind the same ``LLMEngine`` contract.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np

from engines.base import EventSink, GenerationHandle, LLMEngine
from engines.errors import (
    ContextLengthError,
    EngineClosedError,
    InvalidRequestError,
    ModelLoadError,
    OverloadedError,
)
from engines.llm.chat import render_chat
from engines.llm.textstream import TextStream
from engines.types import Failed, Finished, GenerationRequest, LLMInfo, TextDelta

log = logging.getLogger(__name__)


def gpu_offload_available() -> bool:
    """True when the installed llama-cpp-python was built with a GPU backend."""
    return bool(llama_cpp.llama_supports_gpu_offload())


def resolve_gpu_layers(requested: int) -> int:
    """-1 means all layers when a GPU backend exists, else 0 (CPU threads)."""
    if requested < 0:
        return -1 if gpu_offload_available() else 0
    return requested if gpu_offload_available() else 0


def json_schema_to_grammar(schema: dict) -> str:
    """GBNF for a JSON schema, via llama.cpp's converter; InvalidRequestError if unsupported."""
    import json

    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        return str(json_schema_to_gbnf(json.dumps(schema)))
    except Exception as exc:  # the converter raises assorted types on bad schemas
        raise InvalidRequestError(f"response_format json_schema is not supported: {exc}") from exc


@dataclass
class _Job(GenerationHandle):
    request: GenerationRequest
    sink: EventSink
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()


class LlamaEngine(LLMEngine):
    """Serial engine: simple, and the baseline the batched engine is checked against."""

    def __init__(self, model_path: Path, *, n_ctx: int = 8192, n_threads: int | None = None,
                 n_gpu_layers: int = -1, max_queue: int = 64) -> None:
        self._path = Path(model_path)
        self._threads = n_threads or os.cpu_count() or 1
        self._gpu_layers = resolve_gpu_layers(n_gpu_layers)
        try:
            self._llm = llama_cpp.Llama(
                str(self._path), n_ctx=n_ctx, n_threads=self._threads,
                n_threads_batch=self._threads, n_gpu_layers=self._gpu_layers, verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"cannot load {self._path.name}: {exc}") from exc
        meta = self._llm.metadata
        self._template = meta.get("tokenizer.chat_template")
        self._bos = self._piece(self._llm.token_bos())
        self._eos = self._piece(self._llm.token_eos())
        self._info = LLMInfo(
            n_ctx=self._llm.n_ctx(), n_ctx_train=self._llm._model.n_ctx_train(),
            n_embd=self._llm.n_embd(), backend="cuda" if self._gpu_layers else "cpu",
            n_gpu_layers=self._gpu_layers, slots=1, chat_template=self._template,
        )
        self._embedder: llama_cpp.Llama | None = None
        self._embed_lock = threading.Lock()
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=max_queue)
        self._closed = False
        self._busy = 0
        self._thread = threading.Thread(target=self._run, name=f"llm-{self._path.stem}",
                                        daemon=True)
        self._thread.start()

    def _piece(self, token: int) -> str:
        if token < 0:
            return ""
        return self._llm.detokenize([token], special=True).decode("utf-8", "replace")

    @property
    def info(self) -> LLMInfo:
        return self._info

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        add_bos = self._llm.metadata.get("tokenizer.ggml.add_bos_token", "true") != "false"
        return list(self._llm.tokenize(text.encode(), add_bos=add_bos, special=special))

    def render_chat(self, messages: Sequence[dict[str, str]]) -> str:
        return render_chat(messages, self._template, bos_token=self._bos, eos_token=self._eos)

    def json_schema_grammar(self, schema: dict) -> str:
        return json_schema_to_grammar(schema)

    def submit(self, request: GenerationRequest, sink: EventSink) -> GenerationHandle:
        if self._closed:
            raise EngineClosedError("model is unloading")
        n = len(request.prompt_tokens)
        want = request.sampling.max_tokens or 1
        if n + want > self._info.n_ctx:
            raise ContextLengthError(n, self._info.n_ctx, request.sampling.max_tokens)
        if request.sampling.grammar:
            self._grammar(request.sampling.grammar)  # fail fast on a bad grammar
        job = _Job(request, sink)
        try:
            self._queue.put_nowait(job)
        except queue.Full as exc:
            raise OverloadedError("too many requests waiting for this model", 1.0) from exc
        return job

    @staticmethod
    def _grammar(text: str) -> llama_cpp.LlamaGrammar:
        try:
            return llama_cpp.LlamaGrammar.from_string(text, verbose=False)
        except Exception as exc:
            raise InvalidRequestError(f"grammar does not compile: {exc}") from exc

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            self._busy = 1
            try:
                self._generate(job)
            except Exception as exc:  # report, never kill the worker
                log.exception("generation failed")
                job.sink(Failed(exc))
            finally:
                self._busy = 0

    def _generate(self, job: _Job) -> None:
        req, s = job.request, job.request.sampling
        n_prompt = len(req.prompt_tokens)
        limit = self._info.n_ctx - n_prompt
        max_tokens = min(s.max_tokens or limit, limit)
        if job.cancelled.is_set() or self._closed:
            job.sink(Finished("cancelled", n_prompt, 0))
            return
        if s.seed is not None:
            self._llm.set_seed(s.seed)
        grammar = self._grammar(s.grammar) if s.grammar else None
        text = TextStream(stop=s.stop)
        produced = 0
        reason = "length"
        greedy = s.temperature <= 0
        tokens = self._llm.generate(
            list(req.prompt_tokens), top_k=1 if greedy else 0, top_p=s.top_p, min_p=0.0,
            temp=0.0 if greedy else s.temperature, repeat_penalty=1.0, grammar=grammar,
            reset=True,
        )
        for token in tokens:
            if job.cancelled.is_set() or self._closed:
                reason = "cancelled"
                break
            if llama_cpp.llama_vocab_is_eog(self._llm._model.vocab, token):
                reason = "stop"
                break
            produced += 1
            piece = self._llm.detokenize([token], prev_tokens=None)
            out = text.push(piece)
            if out:
                job.sink(TextDelta(out, 1))
            if text.stopped:
                reason = "stop"
                break
            if produced >= max_tokens:
                reason = "length"
                break
        tail = text.flush()
        if tail:
            job.sink(TextDelta(tail, 0))
        job.sink(Finished(reason, n_prompt, produced))  # type: ignore[arg-type]

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        with self._embed_lock:
            if self._closed:
                raise EngineClosedError("model is unloading")
            if self._embedder is None:
                self._embedder = llama_cpp.Llama(
                    str(self._path), embedding=True, n_ctx=min(self._info.n_ctx, 2048),
                    n_threads=self._threads, n_gpu_layers=self._gpu_layers, verbose=False,
                    pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
                )
            emb = self._embedder
            out = []
            for t in texts:
                n = len(emb.tokenize(t.encode(), add_bos=True))
                if n > emb.n_ctx():
                    raise ContextLengthError(n, emb.n_ctx())
                vec = np.asarray(emb.embed(t), dtype=np.float64)
                norm = float(np.linalg.norm(vec)) or 1.0
                out.append((vec / norm).tolist())
            return out

    def stats(self) -> dict[str, float]:
        return {"queue_depth": float(self._queue.qsize()), "active_slots": float(self._busy),
                "slots": 1.0}

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        pending: list[Any] = []
        while True:
            try:
                pending.append(self._queue.get_nowait())
            except queue.Empty:
                break
        for job in pending:
            if job is not None:
                job.sink(Failed(EngineClosedError("model was unloaded")))
        self._queue.put(None)
        self._thread.join(timeout=30)
        with self._embed_lock:
            self._embedder = None
        self._llm.close()

"""OpenAI-compatible endpoints: chat completions, completions, embeddings, models."""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any, Literal

import anyio
from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from appliance.api.errors import mapped
from appliance.api.openai_schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
)
from appliance.auth import Caller
from appliance.deps import CallerDep, MetricsDep, RegistryDep
from appliance.errors import ApplianceError
from appliance.generation import generate
from appliance.usage import UsageRecord
from engines.base import LLMEngine
from engines.errors import EngineError, InvalidRequestError
from engines.types import Finished, GenerationEvent, GenerationRequest, Sampling, TextDelta

router = APIRouter(prefix="/v1", tags=["openai"])
log = logging.getLogger(__name__)


def _llm(engine: Any, model: str) -> LLMEngine:
    if not isinstance(engine, LLMEngine):
        raise InvalidRequestError(
            f"model '{model}' is not a language model; use the /v1/vision endpoints for it")
    return engine


def _sampling(body: ChatCompletionRequest | CompletionRequest, max_tokens: int | None,
              grammar: str | None) -> Sampling:
    return Sampling(max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p,
                    seed=body.seed, stop=body.stops(), grammar=grammar,
                    presence_penalty=body.presence_penalty,
                    frequency_penalty=body.frequency_penalty, logit_bias=body.biases())


def _grammar(engine: LLMEngine, body: ChatCompletionRequest) -> str | None:
    rf = body.response_format
    if rf is None or rf.type == "text":
        return None
    if rf.type == "json_object":
        return engine.json_schema_grammar({"type": "object"})
    if rf.json_schema is None or rf.json_schema.schema_ is None:
        raise InvalidRequestError("response_format json_schema needs json_schema.schema")
    return engine.json_schema_grammar(rf.json_schema.schema_)


class _Run:
    """One generation with its timing, feeding metrics and usage when done."""

    def __init__(self, request: Request, metrics: Any, model: str, prompt_tokens: int) -> None:
        self.request = request
        self.metrics = metrics
        self.model = model
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = 0
        self.cached_tokens = 0  # prompt tokens the engine reused from its prefix cache
        self.started = time.perf_counter()
        self.first_token: float | None = None
        self.finish_reason = "stop"
        self.finished = False
        self._meter()

    def _meter(self) -> None:
        # Kept current after every event: a client that hangs up mid-stream is metered
        # (when its response ends) for the prompt and every token produced until then.
        self.request.state.usage = UsageRecord(
            model=self.model, prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens)

    def see(self, event: GenerationEvent) -> None:
        if isinstance(event, TextDelta):
            self.completion_tokens += event.n_tokens
            if self.first_token is None and event.text:
                self.first_token = time.perf_counter()
                self.metrics.ttft.labels(self.model).observe(self.first_token - self.started)
        elif isinstance(event, Finished):
            self.completion_tokens = event.completion_tokens
            self.cached_tokens = event.cached_tokens
            self.finish_reason = event.finish_reason
        self._meter()

    def done(self) -> None:
        if self.finished:
            return
        self.finished = True
        m = self.metrics
        m.tokens_in.labels(self.model).inc(self.prompt_tokens)
        m.tokens_out.labels(self.model).inc(self.completion_tokens)
        if self.first_token is not None and self.completion_tokens > 1:
            span = time.perf_counter() - self.first_token
            if span > 0:
                m.tokens_per_second.labels(self.model).observe(
                    (self.completion_tokens - 1) / span)
        self._meter()

    def usage(self) -> dict[str, Any]:
        return {"prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens,
                "prompt_tokens_details": {"cached_tokens": self.cached_tokens}}


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


def _authorise(registry: Any, caller: Caller, model: str, feature: str) -> None:
    """404 for a model the box does not have, then 403 if the licence does not cover it."""
    registry.entry(model)
    caller.entitle(model, feature)


def _reserve(caller: Caller, engine: LLMEngine, req: GenerationRequest) -> GenerationRequest:
    """Hold prompt + ``max_tokens`` against the seat's tokens_per_day before generating: 429
    when an explicit ``max_tokens`` does not fit; without one, capped to what is left."""
    n_prompt, max_tokens = len(req.prompt_tokens), req.sampling.max_tokens
    if max_tokens is not None:
        caller.reserve(n_prompt + max_tokens)
        return req
    granted = 1 + caller.reserve(n_prompt + 1, max(0, engine.info.n_ctx - n_prompt - 1))
    return replace(req, sampling=replace(req.sampling, max_tokens=granted))


async def _start(registry: Any, caller: Caller, model: str, feature: str, build: Any
                 ) -> tuple[contextlib.AsyncExitStack, AsyncIterator[GenerationEvent],
                            GenerationEvent, int]:
    """Lease the model, submit, and wait for the first event so errors surface as 4xx/5xx."""
    _authorise(registry, caller, model, feature)
    stack = contextlib.AsyncExitStack()
    try:
        engine = _llm(await stack.enter_async_context(registry.use(model)), model)
        gen_request = _reserve(caller, engine, await anyio.to_thread.run_sync(build, engine))
        limits = caller.ctx.limits  # the engine queues by seat: fair share, batch seats last
        gen_request = replace(gen_request, seat=caller.ctx.name, seat_weight=limits.share,
                              background=limits.priority == "batch")
        events = generate(engine, gen_request)
        stack.push_async_callback(events.aclose)  # type: ignore[attr-defined]
        first = await events.__anext__()
        return stack, events, first, len(gen_request.prompt_tokens)
    except BaseException:
        await stack.aclose()
        raise


async def _events(first: GenerationEvent, events: AsyncIterator[GenerationEvent]
                  ) -> AsyncIterator[GenerationEvent]:
    yield first
    if not isinstance(first, Finished):
        async for event in events:
            yield event


async def _sse_events(first: GenerationEvent, events: AsyncIterator[GenerationEvent],
                      run: _Run, chunk: Any) -> AsyncIterator[bytes]:
    """SSE chunks of the text; an engine failure after the 200 was sent (a worker crash)
    ends the stream with an OpenAI error event, which clients raise as an APIError."""
    try:
        async for event in _events(first, events):
            run.see(event)
            if isinstance(event, TextDelta) and event.text:
                yield _sse(chunk(event.text))
    except EngineError as exc:
        status, body = mapped(exc) or (500, {"error": {"message": str(exc)}})
        log.error("stream of %s ended by %s (%d): %s", run.model, type(exc).__name__,
                  status, exc)
        run.finish_reason = "error"
        yield _sse(body)


async def _collect(stack: contextlib.AsyncExitStack, run: _Run, first: GenerationEvent,
                   events: AsyncIterator[GenerationEvent]) -> str:
    """Whole text of a non-streamed generation."""
    parts = []
    async with stack:
        async for event in _events(first, events):
            run.see(event)
            if isinstance(event, TextDelta):
                parts.append(event.text)
    run.done()
    return "".join(parts)


@router.post("/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request,
                           registry: RegistryDep, metrics: MetricsDep, caller: CallerDep) -> Any:
    """Chat completion, streamed as server-sent events when ``stream`` is true."""
    try:
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    except ValueError as exc:
        raise InvalidRequestError(str(exc)) from exc
    max_tokens = body.max_completion_tokens or body.max_tokens

    def build(engine: LLMEngine) -> GenerationRequest:
        tokens = engine.chat_tokens(messages)  # content never becomes control tokens
        return GenerationRequest(tuple(tokens), _sampling(body, max_tokens, _grammar(engine, body)))

    stack, events, first, n_prompt = await _start(registry, caller, body.model, "chat", build)
    run = _Run(request, metrics, body.model, n_prompt)
    stack.callback(run.done)  # token metrics also for a stream cut off by its client
    ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        return {"id": ident, "object": "chat.completion.chunk", "created": created,
                "model": body.model, "system_fingerprint": None,
                "choices": [{"index": 0, "delta": delta, "logprobs": None,
                             "finish_reason": finish}]}

    if not body.stream:
        text = await _collect(stack, run, first, events)
        return {"id": ident, "object": "chat.completion", "created": created,
                "model": body.model, "system_fingerprint": None,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "logprobs": None, "finish_reason": run.finish_reason}],
                "usage": run.usage()}

    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    async def stream() -> AsyncIterator[bytes]:
        async with stack:
            yield _sse(chunk({"role": "assistant", "content": ""}, None))
            async for data in _sse_events(first, events, run,
                                          lambda text: chunk({"content": text}, None)):
                yield data
            run.done()
            if run.finish_reason == "error":
                return
            yield _sse(chunk({}, run.finish_reason))
            if include_usage:
                final = chunk({}, None) | {"choices": [], "usage": run.usage()}
                yield _sse(final)
            yield b"data: [DONE]\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.post("/completions")
async def completions(body: CompletionRequest, request: Request, registry: RegistryDep,
                      metrics: MetricsDep, caller: CallerDep) -> Any:
    """Plain text completion of ``prompt``."""
    def build(engine: LLMEngine) -> GenerationRequest:
        return GenerationRequest(tuple(engine.tokenize(body.text())),
                                 _sampling(body, body.max_tokens, None))

    stack, events, first, n_prompt = await _start(registry, caller, body.model, "completions",
                                                  build)
    run = _Run(request, metrics, body.model, n_prompt)
    stack.callback(run.done)  # token metrics also for a stream cut off by its client
    ident, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

    def payload(text: str, finish: str | None) -> dict[str, Any]:
        return {"id": ident, "object": "text_completion", "created": created,
                "model": body.model, "system_fingerprint": None,
                "choices": [{"index": 0, "text": text, "logprobs": None,
                             "finish_reason": finish}]}

    if not body.stream:
        text = await _collect(stack, run, first, events)
        return payload(text, run.finish_reason) | {"usage": run.usage()}

    async def stream() -> AsyncIterator[bytes]:
        async with stack:
            async for data in _sse_events(first, events, run,
                                          lambda text: payload(text, None)):
                yield data
            run.done()
            if run.finish_reason == "error":
                return
            yield _sse(payload("", run.finish_reason))
            if body.stream_options and body.stream_options.include_usage:
                yield _sse(payload("", None) | {"choices": [], "usage": run.usage()})
            yield b"data: [DONE]\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.post("/embeddings")
async def embeddings(body: EmbeddingRequest, request: Request, registry: RegistryDep,
                     caller: CallerDep) -> Any:
    """Mean-pooled, L2-normalised embeddings of each input."""
    texts = body.texts()
    if any(not t for t in texts):
        raise InvalidRequestError("input strings must be non-empty")
    _authorise(registry, caller, body.model, "embeddings")
    caller.reserve(sum(len(t.encode("utf-8", "replace")) + 2 for t in texts))  # >= tokens
    async with registry.use(body.model) as engine:
        llm = _llm(engine, body.model)
        vectors = await anyio.to_thread.run_sync(llm.embed, texts)
        n_tokens = await anyio.to_thread.run_sync(
            lambda: sum(len(llm.tokenize(t)) for t in texts))
    if body.encoding_format == "base64":
        import base64

        import numpy as np
        data = [base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode() for v in vectors]
    else:
        data = vectors  # type: ignore[assignment]
    request.state.usage = UsageRecord(model=body.model, prompt_tokens=n_tokens)
    return {"object": "list", "model": body.model,
            "data": [{"object": "embedding", "index": i, "embedding": v}
                     for i, v in enumerate(data)],
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}}


# What each engine's models are for; chat front ends list /v1/models in a model picker.
CAPABILITIES = {"llama": ("chat", "completions", "embeddings"), "ocr": ("ocr",),
                "yolo": ("detection",), "onnx": ("vision",)}
Purpose = Literal["chat", "completions", "embeddings", "ocr", "detection", "vision", "all"]


@router.get("/models")
async def list_models(registry: RegistryDep, caller: CallerDep,
                      purpose: Purpose = Query("chat", description=(
                          "Which models to list: 'chat' (the default, what chat front ends "
                          "offer in their pickers), another capability, or 'all'."))) -> Any:
    """The models for ``purpose``, each with its capabilities, state and (when loaded)
    the backend it runs on."""
    cards = [_model_card(s, caller) for s in registry.status()]
    if purpose != "all":
        cards = [c for c in cards if purpose in c["capabilities"]]
    return {"object": "list", "data": cards, "licence": _licence_label(caller)}


@router.get("/models/{model_id}")
async def get_model(model_id: str, registry: RegistryDep, caller: CallerDep) -> Any:
    registry.entry(model_id)
    for s in registry.status():
        if s["name"] == model_id:
            return _model_card(s, caller)
    raise ApplianceError(f"model {model_id!r} vanished")


def _licence_label(caller: Caller) -> str:
    ctx = caller.ctx
    return "EVALUATION" if ctx.evaluation else ctx.licence_state.upper()


def _model_card(s: dict[str, Any], caller: Caller) -> dict[str, Any]:
    owner = "appliance (EVALUATION)" if caller.ctx.evaluation else "appliance"
    card = {"id": s["name"], "object": "model", "created": int(s["loaded_at"] or 0),
            "owned_by": owner}
    card.update({k: s[k] for k in ("engine", "format", "quantisation", "size", "state")})
    card["capabilities"] = list(CAPABILITIES.get(s["engine"], ("vision",)))
    if "provider" in s:
        card["provider"] = s["provider"]
    if "provider_report" in s:
        card["provider_report"] = s["provider_report"]
    return card

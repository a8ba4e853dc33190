"""OpenAI-compatible endpoints: chat completions, completions, embeddings, models."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any, Literal

from fastapi import APIRouter, Query, Request

from appliance.api.openai_schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
)
from appliance.api.tool_answers import (
    ChatPrompt,
    DeltaStream,
    chat_prompt,
    finish_reason,
    message,
)
from appliance.deps import CallDep, RegistryDep
from appliance.errors import ApplianceError
from appliance.lifecycle import Call, Generation, sse
from engines.base import LLMEngine
from engines.errors import InvalidRequestError
from engines.types import GenerationRequest, Sampling, TextDelta

router = APIRouter(prefix="/v1", tags=["openai"])
log = logging.getLogger(__name__)


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


LANGUAGE_MODEL = "a language model; use the /v1/vision endpoints for it"


@router.post("/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request, call: CallDep) -> Any:
    """Chat completion, streamed as server-sent events when ``stream`` is true."""
    try:
        messages = [m.rendered() for m in body.messages]
    except ValueError as exc:
        raise InvalidRequestError(str(exc)) from exc
    max_tokens = body.max_completion_tokens or body.max_tokens
    prompts: list[ChatPrompt] = []

    def build(engine: LLMEngine) -> GenerationRequest:
        # content and tool definitions never become control tokens
        prompt = chat_prompt(engine, body, messages, _grammar(engine, body))
        prompts.append(prompt)
        return GenerationRequest(tuple(prompt.tokens),
                                 prompt.sampling(_sampling(body, max_tokens, None)))

    engine = await call.lease(body.model, "chat", LLMEngine, LANGUAGE_MODEL)
    gen = await call.generate(engine, await call.prepare(engine, build))
    shape = ChatShape(body.model, prompts[0].calls)
    if body.stream:
        return sse(call, gen, shape, _include_usage(body))
    text = "".join(d.text for d in await gen.collect(request))
    message, finish = shape.whole(text, gen.finish_reason)
    return shape.head("chat.completion") | {
        "choices": [{"index": 0, "message": message, "logprobs": None,
                     "finish_reason": finish}],
        "usage": gen.usage()}


class ChatShape:
    """Chunks of a streamed chat completion (``chat.completion.chunk``); with ``calls``,
    the tool calls in the answer become ``tool_calls`` (see appliance.api.tool_answers)."""

    def __init__(self, model: str, calls: DeltaStream | None = None) -> None:
        self.model = model
        self.calls = calls
        self.ident, self.created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    def whole(self, text: str, finish: str) -> tuple[dict[str, Any], str]:
        """The message and finish reason of a non-streamed answer."""
        if self.calls is None:
            return {"role": "assistant", "content": text}, finish
        self.calls.feed(text)
        self.calls.close()
        return message(self.calls.answer()), finish_reason(finish, self.calls.called)

    def head(self, kind: str) -> dict[str, Any]:
        return {"id": self.ident, "object": kind, "created": self.created,
                "model": self.model, "system_fingerprint": None}

    def chunk(self, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        return self.head("chat.completion.chunk") | {"choices": [
            {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    def opening(self) -> list[dict[str, Any]]:
        forced = self.calls is not None and self.calls.forced  # a call, no text: as OpenAI
        return [self.chunk({"role": "assistant", "content": None if forced else ""}, None)]

    def delta(self, event: TextDelta) -> list[dict[str, Any]]:
        if not event.text:
            return []
        if self.calls is None:
            return [self.chunk({"content": event.text}, None)]
        return [self.chunk(d, None) for d in self.calls.feed(event.text)]

    def closing(self, gen: Generation) -> list[dict[str, Any]]:
        if self.calls is None:
            return [self.chunk({}, gen.finish_reason)]
        rest = [self.chunk(d, None) for d in self.calls.close()]
        return [*rest, self.chunk({}, finish_reason(gen.finish_reason, self.calls.called))]

    def usage(self, gen: Generation) -> dict[str, Any]:
        return self.head("chat.completion.chunk") | {"choices": [], "usage": gen.usage()}


@router.post("/completions")
async def completions(body: CompletionRequest, request: Request, call: CallDep) -> Any:
    """Plain text completion of ``prompt``."""
    def build(engine: LLMEngine) -> GenerationRequest:
        return GenerationRequest(tuple(engine.tokenize(body.text())),
                                 _sampling(body, body.max_tokens, None))

    engine = await call.lease(body.model, "completions", LLMEngine, LANGUAGE_MODEL)
    gen = await call.generate(engine, await call.prepare(engine, build))
    shape = CompletionShape(body.model)
    if body.stream:
        return sse(call, gen, shape, _include_usage(body))
    text = "".join(d.text for d in await gen.collect(request))
    return shape.payload(text, gen.finish_reason) | {"usage": gen.usage()}


class CompletionShape:
    """Chunks of a (streamed) text completion (``text_completion``)."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.ident, self.created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

    def payload(self, text: str, finish: str | None) -> dict[str, Any]:
        return {"id": self.ident, "object": "text_completion", "created": self.created,
                "model": self.model, "system_fingerprint": None,
                "choices": [{"index": 0, "text": text, "logprobs": None,
                             "finish_reason": finish}]}

    def opening(self) -> list[dict[str, Any]]:
        return []

    def delta(self, event: TextDelta) -> list[dict[str, Any]]:
        return [self.payload(event.text, None)] if event.text else []

    def closing(self, gen: Generation) -> list[dict[str, Any]]:
        return [self.payload("", gen.finish_reason)]

    def usage(self, gen: Generation) -> dict[str, Any]:
        return self.payload("", None) | {"choices": [], "usage": gen.usage()}


def _include_usage(body: ChatCompletionRequest | CompletionRequest) -> bool:
    return bool(body.stream_options and body.stream_options.include_usage)


@router.post("/embeddings")
async def embeddings(body: EmbeddingRequest, call: CallDep) -> Any:
    """Mean-pooled, L2-normalised embeddings of each input."""
    texts = body.texts()
    if any(not t for t in texts):
        raise InvalidRequestError("input strings must be non-empty")
    llm = await call.lease(body.model, "embeddings", LLMEngine, LANGUAGE_MODEL)
    call.reserve(sum(len(t.encode("utf-8", "replace")) + 2 for t in texts))  # >= tokens
    vectors = await call.run(llm.embed, texts)
    n_tokens = await call.run(lambda: sum(len(llm.tokenize(t)) for t in texts))
    call.prompt_tokens = n_tokens
    if body.encoding_format == "base64":
        import base64

        import numpy as np
        data = [base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode() for v in vectors]
    else:
        data = vectors  # type: ignore[assignment]
    return {"object": "list", "model": body.model,
            "data": [{"object": "embedding", "index": i, "embedding": v}
                     for i, v in enumerate(data)],
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}}


# What each engine's models are for; chat front ends list /v1/models in a model picker.
CAPABILITIES = {"llama": ("chat", "completions", "embeddings"), "ocr": ("ocr",),
                "yolo": ("detection",), "onnx": ("vision",)}
Purpose = Literal["chat", "completions", "embeddings", "ocr", "detection", "vision", "all"]


@router.get("/models")
async def list_models(registry: RegistryDep, caller: CallDep,
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
async def get_model(model_id: str, registry: RegistryDep, caller: CallDep) -> Any:
    registry.entry(model_id)
    for s in registry.status():
        if s["name"] == model_id:
            return _model_card(s, caller)
    raise ApplianceError(f"model {model_id!r} vanished")


def _licence_label(caller: Call) -> str:
    ctx = caller.ctx
    return "EVALUATION" if ctx.evaluation else ctx.licence_state.upper()


def _model_card(s: dict[str, Any], caller: Call) -> dict[str, Any]:
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

"""OpenAI-compatible endpoints: chat completions, completions, embeddings, models."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Literal

from fastapi import APIRouter, Query, Request

from appliance.api.choices import ChatChoices, CompletionChoices
from appliance.api.openai_schemas import (
    MAX_PROMPTS,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    Prompt,
)
from appliance.api.tool_answers import ChatPrompt, chat_prompt
from appliance.deps import CallDep, RegistryDep, SettingsDep
from appliance.egress import open_to
from appliance.embeddings import (
    check_dimensions,
    check_inputs,
    check_tokens,
    encode,
    shorten,
    split_input,
)
from appliance.errors import ApplianceError
from appliance.lifecycle import Call, Generation, StreamShape, collect, sse
from appliance.modelstore import VISION_CHAT
from engines.base import LLMEngine
from engines.errors import InvalidRequestError
from engines.types import GenerationRequest, Sampling

router = APIRouter(prefix="/v1", tags=["openai"])
log = logging.getLogger(__name__)


def _sampling(body: ChatCompletionRequest | CompletionRequest, max_tokens: int | None,
              grammar: str | None) -> Sampling:
    return Sampling(max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p,
                    seed=body.seed, stop=body.stops(), grammar=grammar,
                    presence_penalty=body.presence_penalty,
                    frequency_penalty=body.frequency_penalty, logit_bias=body.biases(),
                    repetition_penalty=body.repetition_penalty)


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


def chat_builder(body: ChatCompletionRequest, messages: list[dict[str, Any]],
                 prompts: list[ChatPrompt], marker: str | None = None,
                 images: tuple[bytes, ...] = ()) -> Callable[[LLMEngine], GenerationRequest]:
    """What ``call.prepare`` runs for a chat request (chat completions and Responses):
    render with the template (and tools), compile the grammars, tokenise; the prepared
    prompt (with its tool-call reader) is appended to ``prompts``."""
    def build(engine: LLMEngine) -> GenerationRequest:
        # content and tool definitions never become control tokens
        prompt = chat_prompt(engine, body, messages, _grammar(engine, body), marker)
        prompts.append(prompt)
        max_tokens = body.max_completion_tokens or body.max_tokens
        return GenerationRequest(tuple(prompt.tokens),
                                 prompt.sampling(_sampling(body, max_tokens, None)),
                                 logprobs=body.logprob_count(), images=images)

    return build


@router.post("/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request, call: CallDep) -> Any:
    """Chat completion (``n`` choices), streamed as server-sent events when ``stream``;
    messages may hold images for a model that takes them (``vision-chat``)."""
    images = tuple(body.images())
    # Where an image goes in the rendered text: random per request, so that no typed text
    # can claim an image place.
    marker = f"<image-{secrets.token_hex(12)}>" if images else None
    try:
        messages = [m.rendered(marker) for m in body.messages]
    except ValueError as exc:
        raise InvalidRequestError(str(exc)) from exc
    prompts: list[ChatPrompt] = []
    build = chat_builder(body, messages, prompts, marker, images)
    engine = await call.lease(body.model, "chat", LLMEngine, LANGUAGE_MODEL,
                              needs=VISION_CHAT if images else None)
    _check_choices(engine, body.n)
    remote = await call.overflow(engine, images=bool(images))
    if remote is not None:  # the box is saturated and the seat may overflow
        return await call.forward(remote, request, "/chat/completions", cap=engine.info.n_ctx,
                                  limit_field="max_completion_tokens")
    gens = await _generate(call, engine, [await call.prepare(engine, build)], body.n)
    shape = ChatChoices(body.model, body.n, body.logprobs, prompts[0].calls)
    if body.stream:
        return sse(call, gens, shape, _include_usage(body))
    await _collect(request, gens, shape)
    return shape.answer()


@router.post("/completions")
async def completions(body: CompletionRequest, request: Request, call: CallDep) -> Any:
    """Text completion of each prompt (``n`` choices each, prompt-major), with ``echo``
    and the legacy ``logprobs``."""
    prompts = body.prompts()

    def builder(prompt: Prompt) -> Callable[[LLMEngine], GenerationRequest]:
        def build(engine: LLMEngine) -> GenerationRequest:
            ids = engine.tokenize(prompt) if isinstance(prompt, str) else prompt
            return GenerationRequest(tuple(ids), _sampling(body, body.max_tokens, None),
                                     logprobs=body.logprobs, echo=body.echo)
        return build

    engine = await call.lease(body.model, "completions", LLMEngine, LANGUAGE_MODEL)
    _check_choices(engine, body.n, len(prompts))
    remote = await call.overflow(engine)
    if remote is not None:  # the box is saturated and the seat may overflow
        return await call.forward(remote, request, "/completions", cap=engine.info.n_ctx)
    reqs = [await call.prepare(engine, builder(p)) for p in prompts]
    gens = await _generate(call, engine, reqs, body.n)
    shape = CompletionChoices(body.model, [p if isinstance(p, str) else None for p in prompts],
                              body.n, body.echo, body.logprobs is not None)
    if body.stream:
        return sse(call, gens, shape, _include_usage(body))
    await _collect(request, gens, shape)
    return shape.answer()


def _check_choices(engine: LLMEngine, n: int, prompts: int = 1) -> None:
    """400 naming ``n`` when it exceeds the sequences the model decodes at once, or when
    the prompts times ``n`` make more choices than one request may ask for."""
    slots = engine.info.slots
    if n > slots:
        raise InvalidRequestError(f"'n' is {n}, but this model decodes at most {slots} "
                                  f"sequences at once; ask for at most {slots}")
    limit = max(MAX_PROMPTS, slots)
    if n * prompts > limit:
        raise InvalidRequestError(f"{prompts} prompts with 'n' {n} make {n * prompts} choices;"
                                  f" at most {limit} per request")


async def _generate(call: Call, engine: LLMEngine, reqs: list[GenerationRequest], n: int
                    ) -> list[Generation]:
    """``n`` generations per prompt, submitted together: the engine forks the copies from
    one read of the prompt, and usage counts it once. Copy ``i`` samples with ``seed + i``
    (distinct, repeatable choices) and only the first of each prompt echoes it."""
    todo: list[GenerationRequest] = []
    for req in reqs:
        if n > 1:  # the copies' completions count against the seat's day as well
            call.reserve((n - 1) * (req.sampling.max_tokens or 0))
        todo.append(req)
        s = req.sampling
        for i in range(1, n):
            seed = None if s.seed is None else s.seed + i
            todo.append(replace(req, sampling=replace(s, seed=seed), echo=False))
    return await call.generate_all(engine, todo, [i % n != 0 for i in range(len(todo))])


async def _collect(request: Request, gens: list[Generation], shape: StreamShape) -> None:
    """Feed every event of a non-streamed answer to its shape."""
    for index, event in await collect(request, gens):
        shape.feed(index, event)


def _include_usage(body: ChatCompletionRequest | CompletionRequest) -> bool:
    return bool(body.stream_options and body.stream_options.include_usage)


@router.post("/embeddings")
async def embeddings(body: EmbeddingRequest, call: CallDep, registry: RegistryDep,
                     settings: SettingsDep) -> Any:
    """L2-normalised vectors of each input: strings, or OpenAI token arrays decoded to text
    (``appliance.openai_tokens``); ``dimensions`` by the one rule in
    ``appliance.embeddings``; whole batches within the per-request settings."""
    texts, arrays = split_input(body.input)
    if arrays is not None:
        check_inputs(arrays, settings.embed_max_inputs)  # type: ignore[arg-type]
        table = await call.run(registry.token_table)
        texts = [table.decode(ids, i) for i, ids in enumerate(arrays)]
    check_inputs(texts, settings.embed_max_inputs)
    llm = await call.lease(body.model, "embeddings", LLMEngine, LANGUAGE_MODEL)
    truncatable = registry.entry(body.model).manifest.extra.get("truncatable_dimensions", ())
    dims = check_dimensions(body.dimensions, llm.info.n_embd, truncatable)
    n_tokens = check_tokens(await call.run(llm.count_tokens, texts),
                            settings.embed_max_request_tokens)
    call.reserve(n_tokens)
    vectors = await call.run(llm.embed, texts)
    call.prompt_tokens = n_tokens
    data = await call.run(encode, shorten(vectors, dims), body.encoding_format)
    return await call.answer({"object": "list", "model": body.model,
                              "data": [{"object": "embedding", "index": i, "embedding": v}
                                       for i, v in enumerate(data)],
                              "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}})


Purpose = Literal["chat", "completions", "embeddings", "ocr", "detection", "vision",
                  "vision-chat", "all"]


@router.get("/models")
async def list_models(registry: RegistryDep, caller: CallDep,
                      purpose: Purpose = Query("chat", description=(
                          "Which models to list: 'chat' (the default, what chat front ends "
                          "offer in their pickers), another capability, or 'all'."))) -> Any:
    """The models for ``purpose``, each with its capabilities, state, (when loaded) the
    backend it runs on, and whether the caller's requests for it may leave the box
    (``egress``: to the remotes in ``egress_remotes``, when the box is saturated;
    ``egress_images``: requests with images too)."""
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
    card["capabilities"] = list(s["capabilities"])  # what its pack serves (modelstore)
    if "provider" in s:
        card["provider"] = s["provider"]
    if "provider_report" in s:
        card["provider_report"] = s["provider_report"]
    return card | _egress(s, caller)


def _egress(s: dict[str, Any], caller: Call) -> dict[str, Any]:
    """Whether the caller's requests for this model may be served by a remote."""
    book = caller.life.remotes
    overflows = bool({"chat", "completions"} & set(s["capabilities"]))
    policy = caller.ctx.limits.egress
    names = open_to(policy, s["name"], book.list()) if book is not None and overflows else []
    return {"egress": bool(names), "egress_remotes": names,
            "egress_images": bool(names) and policy == "llm+vision"
            and VISION_CHAT in s["capabilities"]}

"""OpenAI's Responses API on the chat path: ``POST /v1/responses``, ``GET`` and ``DELETE
/v1/responses/{id}``.

A request becomes the chat request the chat route runs (``ResponseRequest.chat_request``:
instructions, the stored conversation of ``previous_response_id``, the input items, tools,
``text.format``), goes through the same lifecycle and prompt builder (tools, grammar),
and its events are shaped by ``ResponseShape``. With ``store`` (the default) the answer
and the conversation it read are kept per seat (``appliance.response_store``) before the
client sees the end of it, so a continuation can follow at once.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request

from appliance.api.openai import LANGUAGE_MODEL, _grammar, _sampling
from appliance.api.response_shape import ResponseShape
from appliance.api.responses_schemas import (
    ResponseRequest,
    dump_item,
    history_items,
)
from appliance.api.tool_answers import ChatPrompt, chat_prompt
from appliance.deps import CallDep, ResponsesDep, SettingsDep
from appliance.lifecycle import collect, sse
from engines.base import LLMEngine
from engines.errors import InvalidRequestError
from engines.types import GenerationRequest

router = APIRouter(prefix="/v1", tags=["responses"])


@router.post("/responses")
async def create_response(body: ResponseRequest, request: Request, call: CallDep,
                          responses: ResponsesDep, settings: SettingsDep) -> Any:
    """A model response to ``input`` (after ``previous_response_id``'s conversation),
    streamed as server-sent events when ``stream``."""
    history: list[dict[str, Any]] = []
    if body.previous_response_id is not None:
        earlier = await call.run(responses.get, call.seat_id, body.previous_response_id)
        history = earlier.history()
    if body.store:
        size = await call.run(body.stored_size, history)
        if size > settings.responses_max_bytes:
            raise InvalidRequestError(
                f"the conversation is {size} bytes, more than a stored response holds "
                f"({settings.responses_max_bytes}, the setting responses_max_bytes); send "
                "'store': false or start a new conversation")
    chat = await call.run(lambda: body.chat_request(history_items(history)))
    messages = [m.rendered() for m in chat.messages]
    prompts: list[ChatPrompt] = []

    def build(engine: LLMEngine) -> GenerationRequest:
        prompt = chat_prompt(engine, chat, messages, _grammar(engine, chat))
        prompts.append(prompt)
        return GenerationRequest(
            tuple(prompt.tokens),
            prompt.sampling(_sampling(chat, chat.max_completion_tokens, None)))

    engine = await call.lease(body.model, "chat", LLMEngine, LANGUAGE_MODEL)
    gen = await call.generate(engine, await call.prepare(engine, build))
    calls = prompts[0].calls
    shape = ResponseShape(body.echo(), calls() if calls is not None else None)
    context = [*history, *(dump_item(i) for i in body.items())]

    async def keep() -> None:
        if body.store:
            await call.run(responses.put, call.seat_id, shape.answer(), context)

    if body.stream:
        async def close() -> list[dict[str, Any]]:
            await keep()
            return shape.final_events()

        return sse(call, [gen], shape, False, close=close, named=True)
    for index, event in await collect(request, [gen]):
        shape.feed(index, event)
    await keep()
    return shape.answer()


@router.get("/responses/{response_id}")
async def get_response(response_id: str, call: CallDep, responses: ResponsesDep,
                       stream: bool = Query(False, description="refused: answers are stored "
                                            "complete, there is nothing to resume"),
                       include: list[str] = Query([], alias="include[]"),
                       include_plain: list[str] = Query([], alias="include")) -> Any:
    """A response this seat stored (404 for another seat's, an expired or a deleted one)."""
    if stream:
        raise InvalidRequestError("'stream' is not supported here: a stored response is "
                                  "complete; read it whole")
    if include or include_plain:
        raise InvalidRequestError(f"'include' entries {include + include_plain!r} are not "
                                  "supported by this box")
    stored = await call.run(responses.get, call.seat_id, response_id)
    return stored.response


@router.delete("/responses/{response_id}")
async def delete_response(response_id: str, call: CallDep, responses: ResponsesDep) -> Any:
    """Delete a response this seat stored (404 otherwise)."""
    await call.run(responses.delete, call.seat_id, response_id)
    return {"id": response_id, "object": "response", "deleted": True}

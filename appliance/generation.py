"""Bridge engine threads to asyncio: submit a generation, iterate its events, cancel on exit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from engines.base import LLMEngine
from engines.types import Failed, Finished, GenerationEvent, GenerationRequest


async def generate(engine: LLMEngine, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
    """Yield the events of one generation; closing the iterator early cancels it.

    Raises the engine's error if submission is refused (queue full, too long) or if the
    generation fails (the ``Failed`` event is turned back into its exception).
    """
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[GenerationEvent] = asyncio.Queue()

    def sink(event: GenerationEvent) -> None:
        loop.call_soon_threadsafe(events.put_nowait, event)

    handle = engine.submit(request, sink)
    finished = False
    try:
        while True:
            event = await events.get()
            if isinstance(event, Failed):
                finished = True
                raise event.error
            yield event
            if isinstance(event, Finished):
                finished = True
                return
    finally:
        if not finished:
            handle.cancel()

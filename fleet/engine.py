"""``FleetLLMEngine``: the ``LLMEngine`` contract over a Serve deployment handle.

The head's registry holds one for each language model in fleet mode, in place of the
``WorkerLLMEngine`` a single box holds, so the request path (``appliance/api/openai.py``,
``appliance/generation.py``) is the same code on one box and on a fleet. Serve's router
picks the replica (the least loaded of two it samples); the replica's ``Placement``
names the box in the response (``fleet.headers``). A replica lost with its box (a Ray
actor or node error) ends the generations in flight on it with ``Failed`` of
``EngineCrashedError`` (503 ``engine_crashed`` with Retry-After); Serve starts the replica
again elsewhere if resources allow.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from ray import exceptions as ray_exceptions
from ray.serve.handle import DeploymentHandle

from engines.base import EventSink, GenerationHandle, LLMEngine
from engines.errors import EngineCrashedError, EngineError
from engines.types import Failed, Finished, GenerationRequest, LLMInfo
from fleet.headers import note_placement
from fleet.wire import Placement

log = logging.getLogger(__name__)

CALL_TIMEOUT_S = 60.0
CRASH_RETRY_AFTER_S = 2.0


def crashed(model: str, exc: BaseException) -> EngineCrashedError:
    """A Ray failure (replica or node lost) as the box's own worker-crash error."""
    reason = type(exc).__name__
    return EngineCrashedError(f"the replica of {model} serving this request was lost "
                              f"({reason}); retry", retry_after=CRASH_RETRY_AFTER_S)


def _is_ray_failure(exc: BaseException) -> bool:
    return isinstance(exc, ray_exceptions.RayError) and not isinstance(
        exc, ray_exceptions.TaskCancelledError)


def call(handle: DeploymentHandle, model: str, method: str, timeout: float, *args: Any,
         **kwargs: Any) -> Any:
    """One blocking call to a replica of ``model``: its result; the replica's own
    ``EngineError`` as it is; a lost replica or node (or no answer in ``timeout``) as
    ``EngineCrashedError``."""
    try:
        return getattr(handle, method).remote(*args, **kwargs).result(timeout_s=timeout)
    except EngineError:
        raise
    except Exception as exc:
        cause = getattr(exc, "cause", None)  # a RayTaskError wraps the replica's error
        if isinstance(cause, EngineError):
            raise cause from exc
        if _is_ray_failure(exc) or isinstance(exc, TimeoutError):
            raise crashed(model, exc) from exc
        raise


class _Handle(GenerationHandle):
    def __init__(self, cancel: Callable[[], None]) -> None:
        self._cancel = cancel
        self._done = False

    def cancel(self) -> None:
        if not self._done:
            self._done = True
            self._cancel()


class FleetLLMEngine(LLMEngine):
    """A language model served by the replicas of one Serve deployment."""

    def __init__(self, name: str, handle: DeploymentHandle, *,
                 on_close: Callable[[], None] | None = None,
                 call_timeout: float = CALL_TIMEOUT_S) -> None:
        self.name = name
        self._handle = handle
        self._stream = handle.options(stream=True)
        self._on_close = on_close
        self._timeout = call_timeout
        self._info: LLMInfo = self._call("info")
        self.last_box: str | None = None

    # --- blocking calls (from worker threads) ------------------------------------------
    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return call(self._handle, self.name, method, self._timeout, *args, **kwargs)

    @property
    def info(self) -> LLMInfo:
        return self._info

    @property
    def memory_bytes(self) -> int:
        """The head holds no weights; replicas' memory is their boxes' business."""
        return 1

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        return self._call("tokenize", text, special)

    def render_chat(self, messages: Sequence[dict[str, Any]],
                    tools: Sequence[dict[str, Any]] | None = None) -> str:
        return self._call("render_chat", [dict(m) for m in messages],
                          None if tools is None else [dict(t) for t in tools])

    def chat_tokens(self, messages: Sequence[dict[str, Any]],
                    tools: Sequence[dict[str, Any]] | None = None) -> list[int]:
        return self._call("chat_tokens", [dict(m) for m in messages],
                          None if tools is None else [dict(t) for t in tools])

    def json_schema_grammar(self, schema: dict) -> str:
        return self._call("json_schema_grammar", schema)

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return self._call("embed", list(texts))

    def stats(self) -> dict[str, float]:
        return {}  # per-replica gauges are in `fleet status`; /metrics counts the head

    # --- streaming ----------------------------------------------------------------------
    def submit(self, request: GenerationRequest, sink: EventSink) -> GenerationHandle:
        """Start the generation on a replica; events reach ``sink`` as they stream in.

        On an event loop (the API's) the stream is pumped by a task on that loop;
        elsewhere by a thread. Either way the caller's context goes along, so the
        placement is noted on the right request.
        """
        stream = self._stream.generate.remote(request)
        ctx = contextvars.copy_context()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None:
            task = loop.create_task(self._pump_async(stream, sink), context=ctx)

            def cancel() -> None:
                stream.cancel()
                loop.call_soon_threadsafe(task.cancel)

            return _Handle(cancel)
        thread = threading.Thread(target=ctx.run, args=(self._pump_sync, stream, sink),
                                  daemon=True, name=f"fleet-stream-{self.name}")
        thread.start()
        return _Handle(stream.cancel)

    def _see(self, item: Any, sink: EventSink) -> bool:
        """Deliver one stream item; True once the generation has ended."""
        if isinstance(item, Placement):
            self.last_box = item.box
            note_placement(item.box)
            return False
        sink(item)
        return isinstance(item, Finished | Failed)

    async def _pump_async(self, stream: Any, sink: EventSink) -> None:
        ended = False
        try:
            async for item in stream:
                if self._see(item, sink):
                    ended = True
                    return
        except asyncio.CancelledError:
            if not ended:
                ended = True
                sink(Finished("cancelled", 0, 0))
            raise
        except Exception as exc:
            ended = True
            sink(Failed(self._failure(exc)))
        finally:
            if not ended:
                sink(Failed(crashed(self.name, RuntimeError("the stream ended early"))))

    def _pump_sync(self, stream: Any, sink: EventSink) -> None:
        try:
            for item in stream:
                if self._see(item, sink):
                    return
        except Exception as exc:
            sink(Failed(self._failure(exc)))
            return
        sink(Failed(crashed(self.name, RuntimeError("the stream ended early"))))

    def _failure(self, exc: Exception) -> Exception:
        if isinstance(exc, ray_exceptions.TaskCancelledError):
            return EngineCrashedError("the generation was cancelled", retry_after=1.0)
        cause = getattr(exc, "cause", None)
        if isinstance(cause, EngineError):
            return cause
        log.warning("stream of %s lost its replica: %r", self.name, exc)
        return crashed(self.name, exc)

    def close(self) -> None:
        if self._on_close is not None:
            self._on_close()

"""``FleetLLMEngine``: the ``LLMEngine`` contract over a Serve deployment handle.

The head's registry holds one for each language model in fleet mode, in place of the
``WorkerLLMEngine`` a single box holds, so the request path (``appliance/api/openai.py``,
``appliance/generation.py``) is the same code on one box and on a fleet. Serve's router
picks the replica (the least loaded of two it samples); the replica's ``Placement``
names the box in the response (``fleet.headers``). A replica lost with its box (a Ray
actor or node error) ends the generations in flight on it with ``Failed`` of
``EngineCrashedError`` (503 ``engine_crashed`` with Retry-After); Serve starts the replica
again elsewhere if resources allow.

A model allowed to scale to zero (``scales_to_zero``) is checked before each call: with no
replica running the call fails at once with ``ModelStartingError`` (503 ``model_starting``,
Retry-After: the last start's duration, less the time it has been starting) instead of
waiting in Serve's queue, and one wake-up call is sent through the handle, which is what
makes Serve start a replica. A replica seen running is trusted for ``SEEN_TTL_S``, so a busy
model asks the controller at most once a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from ray import exceptions as ray_exceptions
from ray.serve.handle import DeploymentHandle

from engines.base import EventSink, GenerationHandle, LLMEngine
from engines.errors import EngineCrashedError, EngineError, ModelStartingError
from engines.types import Failed, Finished, GenerationRequest, LLMInfo
from fleet.headers import note_placement
from fleet.load import ReplicaLoad, slot_gauges
from fleet.wire import Placement

log = logging.getLogger(__name__)

CALL_TIMEOUT_S = 60.0
CRASH_RETRY_AFTER_S = 2.0
SEEN_TTL_S = 1.0
FIRST_START_S = 5.0  # Retry-After before any start was timed
COUNT_TTL_S = 2.0  # how long stats() trusts a replica count
GRPC_PROBE_S = 15.0  # a replica that answered over Ray has this long over gRPC


def crashed(model: str, exc: BaseException) -> EngineCrashedError:
    """A Ray failure (replica or node lost) as the box's own worker-crash error."""
    reason = type(exc).__name__
    return EngineCrashedError(f"the replica of {model} serving this request was lost "
                              f"({reason}); retry", retry_after=CRASH_RETRY_AFTER_S)


def loop_stream(handle: DeploymentHandle, grpc: bool) -> DeploymentHandle:
    """A streaming handle to ``handle``'s deployment whose router runs on the calling
    event loop (the API's), so a token reaches the request's task without crossing to
    Serve's router thread; over Serve's direct gRPC channel when ``grpc``, else as Ray
    objects. Call on that loop."""
    own = DeploymentHandle(handle.deployment_name, handle.app_name)
    own._init(_run_router_in_separate_loop=False)
    return own.options(stream=True, _by_reference=not grpc)


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
                 call_timeout: float = CALL_TIMEOUT_S,
                 running: Callable[[], int] | None = None, scales_to_zero: bool = False,
                 start_timeout: float = 900.0, load: ReplicaLoad | None = None,
                 slots_per_replica: int = 0, prompts: LLMEngine | None = None,
                 stream_grpc: bool = True) -> None:
        """``prompts``: an engine on the head that tokenises as the replicas do (a prompt
        worker, ``engines.llm.vocab``); without one each prompt is a call to a replica.
        ``stream_grpc``: generations stream over Serve's gRPC channel (``loop_stream``)."""
        self.name = name
        self._prompts = prompts
        self._handle = handle
        self._stream = handle.options(stream=True)  # for a caller without an event loop
        self._stream_grpc = stream_grpc
        self._loop_stream: tuple[asyncio.AbstractEventLoop, DeploymentHandle] | None = None
        self._on_close = on_close
        self._timeout = call_timeout
        self._running = running  # replicas running now (a controller call)
        self._scales_to_zero = scales_to_zero
        self._start_timeout = start_timeout
        self._lock = threading.Lock()
        self._seen_until = 0.0  # a replica was seen running; trusted until then
        self._waking_since: float | None = None
        self._start_s = FIRST_START_S
        self._load = load or ReplicaLoad()
        self._slots_per_replica = slots_per_replica
        self._replica_count: tuple[float, int] | None = None  # (asked at, count)
        self._in_flight = 0  # generations this head has open on the model's replicas
        # the deployment starts with a replica; after a restart of the head it may have
        # none yet, so this first call waits for one as long as a start may take
        self._info: LLMInfo = self._invoke("info", timeout=start_timeout)
        self.last_box: str | None = None
        if stream_grpc and not self._grpc_reachable():
            self._stream_grpc = False

    @property
    def stream_channel(self) -> str:
        """How tokens come from the replicas: ``grpc`` or ``ray`` (Ray objects)."""
        return "grpc" if self._stream_grpc else "ray"

    def _grpc_reachable(self) -> bool:
        """One call over Serve's gRPC channel to a running replica. A firewall that blocks
        the replica's port makes Serve retry such calls for ever, so a model whose
        replica does not answer within ``GRPC_PROBE_S`` streams as Ray objects instead."""
        response = self._handle.options(_by_reference=False).placement.remote()
        try:
            response.result(timeout_s=GRPC_PROBE_S)
            return True
        except Exception as exc:
            response.cancel()
            log.warning("the replicas of %s did not answer over Serve's gRPC channel (%r): "
                        "their tokens stream as Ray objects over the worker ports; open "
                        "TCP between fleet boxes, or set fleet_stream_grpc = false",
                        self.name, exc)
            return False

    # --- scale to zero ------------------------------------------------------------------
    def _ensure_replica(self) -> None:
        """Return if a replica runs (or the model never scales to zero); else wake one and
        raise ``ModelStartingError``. Blocking (a controller call): from worker threads."""
        if not self._scales_to_zero or time.monotonic() < self._seen_until:
            return
        if self._waking_since is None:
            count = self._replicas_running(max_age=0.0)
            if count is None:  # the controller is busy: let Serve's queue decide
                return
            if count > 0:
                self._seen_until = time.monotonic() + SEEN_TTL_S
                return
        self._starting()

    def _replicas_running(self, max_age: float) -> int | None:
        """Replicas running, as the controller counted them at most ``max_age`` seconds ago
        (one count serves both the scale-to-zero check and ``stats``); None when unknown.
        Blocking (a controller call): from worker threads."""
        if self._running is None:
            return None
        now = time.monotonic()
        cached = self._replica_count
        if cached is None or now - cached[0] > max_age:
            try:
                cached = self._replica_count = (now, int(self._running()))
            except Exception as exc:
                log.warning("replica count of %s unknown: %s", self.name, exc)
                return None
        return cached[1]

    def _starting(self) -> None:
        """Wake a replica (once) and raise ``ModelStartingError``."""
        now = time.monotonic()
        with self._lock:
            if self._waking_since is None:
                self._waking_since = now
                threading.Thread(target=self._wake, daemon=True,
                                 name=f"fleet-wake-{self.name}").start()
            since = self._waking_since
        left = max(1.0, self._start_s - (now - since))
        raise ModelStartingError(
            f"model {self.name!r} is starting: no replica was running (it scales to zero "
            f"when idle); retry in {left:.0f} s", retry_after=left)

    def _wake(self) -> None:
        """One call through the handle: queued with no replica, it makes Serve start one."""
        started = time.monotonic()
        try:
            self._handle.placement.remote().result(timeout_s=self._start_timeout)
        except Exception as exc:
            log.warning("starting a replica of %s failed: %r", self.name, exc)
        else:
            self._start_s = time.monotonic() - started
            self._seen_until = time.monotonic() + SEEN_TTL_S
            log.info("a replica of %s started in %.1f s", self.name, self._start_s)
        finally:
            with self._lock:
                self._waking_since = None

    # --- blocking calls (from worker threads) ------------------------------------------
    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        self._ensure_replica()
        return self._invoke(method, *args, **kwargs)

    def _invoke(self, method: str, *args: Any, timeout: float | None = None,
                **kwargs: Any) -> Any:
        return call(self._handle, self.name, method, timeout or self._timeout, *args,
                    **kwargs)

    @property
    def info(self) -> LLMInfo:
        return self._info

    @property
    def memory_bytes(self) -> int:
        """The head holds no weights; replicas' memory is their boxes' business."""
        return 1

    def _prepare(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """A prompt call: on the head's prompt worker when there is one (a pipe round trip
        instead of a routed Serve call to another box), else on a replica."""
        if self._prompts is None:
            return self._call(method, *args, **kwargs)
        self._ensure_replica()
        return getattr(self._prompts, method)(*args, **kwargs)

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        return self._prepare("tokenize", text, special=special)

    def render_chat(self, messages: Sequence[dict[str, Any]],
                    tools: Sequence[dict[str, Any]] | None = None) -> str:
        return self._prepare("render_chat", [dict(m) for m in messages],
                             None if tools is None else [dict(t) for t in tools])

    def chat_tokens(self, messages: Sequence[dict[str, Any]],
                    tools: Sequence[dict[str, Any]] | None = None) -> list[int]:
        return self._prepare("chat_tokens", [dict(m) for m in messages],
                             None if tools is None else [dict(t) for t in tools])

    def json_schema_grammar(self, schema: dict) -> str:
        return self._prepare("json_schema_grammar", schema)

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return self._call("embed", list(texts))

    def stats(self) -> dict[str, float]:
        """The model's slots across the fleet (``fleet.load.slot_gauges``): running
        replicas × their slots, and the generations in flight through this head, the
        fleet's only ingress. Empty while the replica count is unknown. Blocking (a
        controller call at most every ``COUNT_TTL_S``): from worker threads."""
        count = self._replicas_running(max_age=COUNT_TTL_S)
        if count is None:
            return {}
        with self._lock:
            in_flight = self._in_flight
        return slot_gauges(count, self._slots_per_replica, in_flight)

    def _opened(self, delta: int) -> None:
        with self._lock:
            self._in_flight += delta

    # --- streaming ----------------------------------------------------------------------
    def submit(self, request: GenerationRequest, sink: EventSink) -> GenerationHandle:
        """Start the generation on a replica; events reach ``sink`` as they stream in.

        On an event loop (the API's) the stream is pumped by a task on that loop;
        elsewhere by a thread. Either way the caller's context goes along, so the
        placement is noted on the right request. Never blocks: a model known to be
        starting fails at once (``prepare`` has just asked, in a thread).
        """
        if self._waking_since is not None:
            self._starting()
        ctx = contextvars.copy_context()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None:
            if self._loop_stream is None or self._loop_stream[0] is not loop:
                self._loop_stream = (loop, loop_stream(self._handle, self._stream_grpc))
            stream = self._loop_stream[1].generate.remote(request)
            task = loop.create_task(self._pump_async(stream, sink), context=ctx)

            def stop() -> None:
                stream.cancel()
                task.cancel()

            def cancel() -> None:  # from any thread: the stream's router lives on ``loop``
                with contextlib.suppress(RuntimeError):  # a closed loop: a closed stream
                    loop.call_soon_threadsafe(stop)

            return _Handle(cancel)
        stream = self._stream.generate.remote(request)
        thread = threading.Thread(target=ctx.run, args=(self._pump_sync, stream, sink),
                                  daemon=True, name=f"fleet-stream-{self.name}")
        thread.start()
        return _Handle(stream.cancel)

    def _see(self, item: Any, sink: EventSink, placed: list[str]) -> bool:
        """Deliver one stream item; True once the generation has ended. A placement is
        noted for the response and counted on its replica (into ``placed``)."""
        if isinstance(item, Placement):
            self.last_box = item.box
            note_placement(item.box, item.replica)
            if item.replica:
                self._load.begin(item.replica)
                placed.append(item.replica)
            return False
        sink(item)
        return isinstance(item, Finished | Failed)

    async def _pump_async(self, stream: Any, sink: EventSink) -> None:
        ended = False
        placed: list[str] = []
        self._opened(1)  # counted by the pump itself, so a task cancelled unstarted is not
        try:
            async for item in stream:
                if self._see(item, sink, placed):
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
            self._opened(-1)
            for replica in placed:
                self._load.end(replica)
            if not ended:
                sink(Failed(crashed(self.name, RuntimeError("the stream ended early"))))

    def _pump_sync(self, stream: Any, sink: EventSink) -> None:
        placed: list[str] = []
        self._opened(1)
        try:
            for item in stream:
                if self._see(item, sink, placed):
                    return
        except Exception as exc:
            sink(Failed(self._failure(exc)))
            return
        finally:
            self._opened(-1)
            for replica in placed:
                self._load.end(replica)
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
        if self._prompts is not None:
            self._prompts.close()
        if self._on_close is not None:
            self._on_close()

"""The one path of every inference request: admit ▸ lease ▸ prepare ▸ generate ▸ settle.

Routes parse the body, call the lifecycle and shape the answer; nothing else on the request
path touches the licence guard, the model registry or the usage ledger.

- **admit** (``Lifecycle.admit``, run by the ``CallDep`` dependency): the bearer key and the
  licence (``LicenseGuard.check``, in a thread: a cache miss hashes the key, a refresh ticks
  the trusted clock), then one of the seat's concurrency slots, waiting in the seat's line.
- **lease** (``Call.lease``): 404 for a model the box lacks, 403 unless the licence covers it
  and the feature, 400 for the wrong kind of model, then the engine, protected from eviction
  until the request has been settled.
- **overflow** (``Call.overflow``, after the lease, chat and completions only): when the
  seat's egress policy allows it, a registered remote serves the model and the box is
  saturated (``appliance.egress``), ``Call.forward`` sends the client's request to that
  remote instead and relays its answer (streamed or not); the seat's token budget is
  reserved as for a local request and the usage row names the remote.
- **prepare** (``Call.prepare``): render, tokenise and compile the grammar in a worker
  thread, then reserve the worst-case tokens against the seat's daily budget.
- **generate** (``Call.generate``, or ``Call.generate_all`` for ``n`` choices and lists of
  prompts: all submitted before any is waited for, so the engine forks copies of one
  prompt): submit, wait for the first event (so a refusal is a 4xx or 5xx, not a broken
  200), then stream (``sse``, the events of all the call's generations interleaved into
  one shape) or ``collect``; a client that hangs up cancels the generations, streamed or
  not.
- **settle** (``Lifecycle.settle``, once, after the last byte was sent): close the leases and
  generations, release the slot, settle the reservations with the real count and write the
  usage row (in a thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

import anyio
from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from starlette.datastructures import MutableHeaders

from appliance.api.errors import error_body, mapped
from appliance.egress import Load, Remote, allows, should_overflow
from appliance.errors import ClientGoneError
from appliance.metrics import Metrics
from appliance.registry import ModelRegistry
from appliance.remote_client import RemoteClient
from appliance.remotes import RemoteBook
from appliance.seatline import SeatLines
from engines.base import LLMEngine
from engines.errors import EngineError, InvalidRequestError
from engines.types import (
    Failed,
    Finished,
    GenerationEvent,
    GenerationRequest,
    Sampling,
    TextDelta,
)
from licensing.errors import RateLimited, Unauthenticated
from licensing.guard import LicenseGuard, SeatContext
from licensing.limits import Reservation

log = logging.getLogger(__name__)
E = TypeVar("E")
_current: contextvars.ContextVar[Call | None] = contextvars.ContextVar(
    "appliance_call", default=None)


def bearer(request: Request) -> str:
    """The API key from ``Authorization: Bearer ...`` (or ``api-key``); 401 if absent."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    alt = request.headers.get("api-key", "").strip()
    if alt:
        return alt
    raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>' "
                          "(ask the box's admin for a seat key)")


def licence_headers(ctx: SeatContext) -> dict[str, str]:
    """``X-Licence-State`` (and a warning in grace or evaluation) for every answer."""
    headers = {"x-licence-state": "evaluation" if ctx.evaluation else ctx.licence_state}
    if ctx.licence_state == "grace":
        headers["x-licence-warning"] = (f"licence {ctx.licence_id} has expired; "
                                        f"{ctx.days_left} day(s) of grace left")
    elif ctx.evaluation:
        headers["x-licence-warning"] = f"EVALUATION licence, {ctx.days_left} day(s) left"
    return headers


NODE_HEADER = "x-appliance-node"


def note_box(box: str) -> None:
    """Record that the request being served in this context runs on ``box``: its answer
    says so in ``X-Appliance-Node`` and its usage row names the box (no-op outside one)."""
    call = _current.get()
    if call is not None:
        call.box = box
        call.headers[NODE_HEADER] = box


def note_header(name: str, value: str) -> None:
    """Add a response header to the request being served in this context (no-op outside
    one); e.g. the fleet names the box a generation runs on before its first event."""
    call = _current.get()
    if call is not None:
        call.headers[name] = value


def status_of(exc: BaseException) -> int:
    """The HTTP status the error handlers will give ``exc`` (for the usage row)."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    if isinstance(exc, RequestValidationError):
        return 400
    if isinstance(exc, HTTPException):
        return exc.status_code
    if isinstance(exc, Exception):
        hit = mapped(exc)
        return hit[0] if hit is not None else 500
    return 499  # cancelled: the client went away


def missing_capability(registry: ModelRegistry, model: str, needs: str) -> str:
    """Why ``model`` cannot serve a request that needs ``needs``, naming the models of this
    box that can (for ``vision-chat``: the vision-language models, which take images)."""
    able = [n for n in registry.names() if needs in registry.entry(n).manifest.capabilities]
    if needs == "vision-chat":
        head = f"model {model!r} does not take images"
        if not able:
            return (f"{head}, and no vision-language model is installed on this box "
                    "(a chat model pack with its projector); send text only, or ask the "
                    "box's admin to install one")
        return f"{head}; the models on this box that take images: {', '.join(able)}"
    head = f"model {model!r} does not serve {needs}"
    if not able:
        return f"{head}, and no model on this box does"
    return f"{head}; the models on this box that do: {', '.join(able)}"


@dataclass(eq=False)
class Call:
    """One admitted request: who calls, what it holds, what it used. Settled once."""

    ctx: SeatContext
    route: str
    life: Lifecycle = field(repr=False)
    headers: MutableHeaders = field(default_factory=MutableHeaders, repr=False)
    model: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    images: int = 0
    box: str = ""  # the box that served it, when not this one (a fleet replica's)
    reservations: list[Reservation] = field(default_factory=list)
    stack: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack,
                                             repr=False)
    slot_held: bool = True
    streaming: bool = False  # settled by its stream, before the last event
    settled: bool = False

    @property
    def seat_id(self) -> int:
        return self.ctx.seat_id

    # --- lease -------------------------------------------------------------------------
    async def lease(self, model: str, feature: str, kind: type[E], what: str,
                    needs: str | None = None) -> E:
        """The loaded engine for ``model``, held until the call is settled: 404 for a model
        the box lacks, 403 unless the licence covers ``model`` and ``feature``, 400 unless
        the engine is a ``kind`` (``what`` names it in the error) and the pack serves
        ``feature`` (an embedding model does not chat)."""
        registry = self.life.registry
        entry = registry.entry(model)
        self.life.guard.entitle(model, feature)
        if entry.manifest.engine not in self.life.engines_for(kind):
            raise InvalidRequestError(f"model {model!r} is not {what}")
        caps = entry.manifest.capabilities
        if feature in ("chat", "completions", "embeddings") and feature not in caps:
            raise InvalidRequestError(
                f"model {model!r} does not serve {feature}; it serves {', '.join(caps)}"
                + (" (an embedding model: use /v1/embeddings)" if caps == ("embeddings",)
                   else ""))
        if needs is not None and needs not in caps:  # before loading anything
            raise InvalidRequestError(missing_capability(registry, model, needs))
        self.model = model
        engine = await self.stack.enter_async_context(registry.use(model))
        if not isinstance(engine, kind):
            raise InvalidRequestError(f"model {model!r} is not {what}")
        return engine

    # --- overflow ----------------------------------------------------------------------
    async def overflow(self, engine: LLMEngine, images: bool = False) -> Remote | None:
        """After ``lease``: the remote this request goes to instead of ``engine``, or None
        to serve it here (``appliance.egress.should_overflow``; ``images``: the request
        carries images)."""
        life = self.life
        remotes = life.remotes.list() if life.remotes is not None else []
        policy = self.ctx.limits.egress
        if not allows(policy, images) or not any(r.serves(self.model) for r in remotes):
            return None  # nothing could leave: no need to ask the engine how busy it is
        stats = await anyio.to_thread.run_sync(engine.stats)
        return should_overflow(policy, images, self.model, remotes, Load.from_stats(stats))

    async def forward(self, remote: Remote, request: Request, path: str, *, cap: int,
                      limit_field: str = "max_tokens") -> Response:
        """Send the client's request body to ``remote`` (``path`` under its base URL) and
        answer with what it answers: the model renamed back, ``X-Appliance-Node`` naming
        the remote, the usage it reports metered here. The seat's day holds a rough
        prompt estimate (a token per 4 bytes of body) plus ``max_tokens`` per choice;
        without ``max_tokens`` up to ``cap`` tokens, and the remote is told to stop at
        what the day allows (``limit_field``) when that is less."""
        life = self.life
        if life.remotes is None or life.remote_client is None:
            raise RuntimeError("overflow without remotes")
        raw = await request.body()
        body = json.loads(raw)
        estimate = len(raw) // 4 + 1
        n = body.get("n") if isinstance(body.get("n"), int) else 1
        prompt = body.get("prompt")  # /completions: a list of prompts makes n choices each
        if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
            n *= len(prompt)
        asked = body.get("max_completion_tokens") or body.get("max_tokens")
        if isinstance(asked, int):
            self.reserve(estimate + max(1, n) * asked)
        else:
            granted = self.reserve(estimate, max(0, cap))
            if granted < cap:
                body[limit_field] = max(1, granted // max(1, n))
        body["model"] = remote.remote_model(self.model)
        key = await anyio.to_thread.run_sync(life.remotes.key, remote.name)
        self.box, self.headers[NODE_HEADER] = remote.name, remote.name
        life.metrics.overflow.labels(self.model, remote.name).inc()
        if not body.get("stream"):
            data = await life.remote_client.complete(remote, key, path, body)
            self._see_usage(data)
            data["model"] = self.model
            return await self.answer(data)
        wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        upstream = await life.remote_client.stream(remote, key, path, body)
        return self._relay(upstream, wants_usage)

    def _see_usage(self, obj: dict[str, Any]) -> None:
        usage = obj.get("usage")
        if isinstance(usage, dict):
            self.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            self.completion_tokens = int(usage.get("completion_tokens") or 0)

    def _relay(self, upstream: Any, wants_usage: bool) -> StreamingResponse:
        """The remote's events as this box's server-sent events (see ``forward``). Until
        the remote's usage chunk arrives (a stream cut short never gets one), the call
        counts each relayed chunk that carries text as one completion token."""
        async def chunks() -> AsyncIterator[bytes]:
            reported = False
            try:
                async for obj in upstream.events():
                    if isinstance(obj.get("usage"), dict):
                        reported = True
                        self._see_usage(obj)
                    elif not reported and _has_text(obj):
                        self.completion_tokens += 1
                    if obj.get("usage") and not obj.get("choices") and not wants_usage:
                        continue  # the usage chunk this box asked for, not the client
                    if "model" in obj:
                        obj["model"] = self.model
                    yield sse_bytes(obj)
            except Exception as exc:
                hit = mapped(exc)
                status, body = hit or (502, error_body("the remote's stream failed",
                                                       "server_error", "remote_failed"))
                log.error("overflow stream of %s via %s ended (%d): %s", self.model, self.box,
                          status, exc)
                await self.life.settle(self, 200)
                yield sse_bytes(body)
                return
            finally:
                await upstream.aclose()
            await self.life.settle(self, 200)
            yield b"data: [DONE]\n\n"

        self.streaming = True
        headers = {**self.headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(chunks(), media_type="text/event-stream", headers=headers)

    # --- prepare -----------------------------------------------------------------------
    def reserve(self, need: int, optional: int = 0) -> int:
        """Hold ``need`` tokens plus what today allows of ``optional``; return how many of
        ``optional`` were granted. RateLimited (429) if ``need`` does not fit."""
        res = self.life.guard.reserve(self.ctx, need, optional)
        self.reservations.append(res)
        return res.tokens - max(0, need)

    async def prepare(self, engine: LLMEngine, build: Callable[[LLMEngine], GenerationRequest]
                      ) -> GenerationRequest:
        """``build(engine)`` (render, tokenise, grammar) in a worker thread, then hold the
        prompt plus ``max_tokens`` against the seat's tokens per day: 429 when an explicit
        ``max_tokens`` does not fit; without one, capped to what the day has left."""
        req = await anyio.to_thread.run_sync(build, engine)
        n_prompt, max_tokens = len(req.prompt_tokens), req.sampling.max_tokens
        if max_tokens is not None:
            self.reserve(n_prompt + max_tokens)
        else:
            granted = 1 + self.reserve(n_prompt + 1, max(0, engine.info.n_ctx - n_prompt - 1))
            req = replace(req, sampling=replace(req.sampling, max_tokens=granted))
        limits = self.ctx.limits  # the engine queues by seat: fair share, batch seats last
        return replace(req, seat=self.ctx.name, seat_weight=limits.share,
                       background=limits.priority == "batch")

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Blocking engine work (embeddings, vision) in a worker thread (which sees this
        call as the current one: a fleet engine names its box there)."""
        _current.set(self)
        return await anyio.to_thread.run_sync(fn, *args)

    async def answer(self, payload: Any) -> Response:
        """A large JSON answer (thousands of floats) serialised in a worker thread."""
        body = await anyio.to_thread.run_sync(
            lambda: json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode())
        return Response(body, media_type="application/json", headers=dict(self.headers))

    # --- generate ----------------------------------------------------------------------
    async def generate(self, engine: LLMEngine, req: GenerationRequest) -> Generation:
        """Submit ``req`` and wait for its first event; errors before it raise here."""
        return (await self.generate_all(engine, [req]))[0]

    async def generate_all(self, engine: LLMEngine, reqs: Sequence[GenerationRequest],
                           shared: Sequence[bool] = ()) -> list[Generation]:
        """Submit every request, in order, before waiting for any (n choices, a list of
        prompts: the engine sees them together), then wait for each one's first event;
        the first error raises here. ``shared[i]``: request ``i`` repeats a prompt another
        request of this call counts (one of ``n`` choices), so usage counts it once."""
        _current.set(self)
        gens = [Generation(self, engine, req, counts_prompt=not (i < len(shared) and shared[i]))
                for i, req in enumerate(reqs)]
        for gen in gens:
            self.stack.push_async_callback(gen.aclose)
        results = await asyncio.gather(*(gen.start() for gen in gens), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return gens


def _has_text(chunk: dict[str, Any]) -> bool:
    """Whether a streamed chat or completion chunk carries generated text."""
    for choice in chunk.get("choices") or ():
        if isinstance(choice, dict) and (choice.get("text") or (
                isinstance(choice.get("delta"), dict) and choice["delta"].get("content"))):
            return True
    return False


class Generation:
    """One running LLM generation; keeps the call's usage and the token metrics current."""

    def __init__(self, call: Call, engine: LLMEngine, req: GenerationRequest,
                 counts_prompt: bool = True) -> None:
        self.call = call
        self.counts_prompt = counts_prompt  # False: a copy of a prompt counted elsewhere
        self.engine = engine
        self.req = req
        self.metrics = call.life.metrics
        self.prompt_tokens = len(req.prompt_tokens)
        self.completion_tokens = 0
        self.cached_tokens = 0  # prompt tokens the engine reused from its prefix cache
        self.finish_reason = "stop"
        self.started = time.perf_counter()
        self.first_token: float | None = None
        self._queue: asyncio.Queue[GenerationEvent] = asyncio.Queue()
        self._handle: Any = None
        self._first: GenerationEvent | None = None
        self._ended = False
        self._counted = False
        if counts_prompt:
            call.prompt_tokens += self.prompt_tokens

    async def start(self) -> None:
        loop = asyncio.get_running_loop()

        def sink(event: GenerationEvent) -> None:
            loop.call_soon_threadsafe(self._queue.put_nowait, event)

        self._handle = self.engine.submit(self.req, sink)
        self._first = await self._next()

    async def _next(self) -> GenerationEvent:
        event = await self._queue.get()
        if isinstance(event, Failed):
            self._ended = True
            raise event.error
        if isinstance(event, Finished):
            self._ended = True
        self._see(event)
        return event

    def _see(self, event: GenerationEvent) -> None:
        if isinstance(event, TextDelta):
            self.completion_tokens += event.n_tokens
            self.call.completion_tokens += event.n_tokens
            if self.first_token is None and event.text:
                self.first_token = time.perf_counter()
                self.metrics.ttft.labels(self.call.model).observe(
                    self.first_token - self.started)
        elif isinstance(event, Finished):
            self.call.completion_tokens += event.completion_tokens - self.completion_tokens
            self.completion_tokens = event.completion_tokens
            self.cached_tokens = event.cached_tokens
            self.finish_reason = event.finish_reason

    async def events(self) -> AsyncIterator[GenerationEvent]:
        """The events from the first on (``PromptTokens`` when echo was asked, text
        deltas), ending with ``Finished``; raises the engine's error if the generation
        fails (a worker crash)."""
        event = self._first
        while event is not None:
            yield event  # type: ignore[misc]
            if isinstance(event, Finished):
                return
            event = await self._next()

    def cancel(self) -> None:
        if not self._ended and self._handle is not None:
            self._handle.cancel()

    def done(self) -> None:
        """Count the tokens in /metrics (once)."""
        if self._counted:
            return
        self._counted = True
        m, model = self.metrics, self.call.model
        m.tokens_in.labels(model).inc(self.prompt_tokens if self.counts_prompt else 0)
        m.tokens_out.labels(model).inc(self.completion_tokens)
        if self.first_token is not None and self.completion_tokens > 1:
            span = time.perf_counter() - self.first_token
            if span > 0:
                m.tokens_per_second.labels(model).observe((self.completion_tokens - 1) / span)

    async def aclose(self) -> None:
        self.cancel()  # a stream cut off by its client stops generating
        self.done()


async def merged(streams: Sequence[AsyncIterator[GenerationEvent]]
                 ) -> AsyncIterator[tuple[int, GenerationEvent]]:
    """``(index, event)`` from several event streams as they come (lower index first
    among events ready together); the first stream that raises ends it all."""
    iters = list(streams)
    if len(iters) == 1:  # the common case: no task per event
        async for event in iters[0]:
            yield 0, event
        return
    pending = {asyncio.ensure_future(anext(it)): i for i, it in enumerate(iters)}
    try:
        while pending:
            ready, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for fut in sorted(ready, key=lambda f: pending[f]):
                i = pending.pop(fut)
                try:
                    event = fut.result()
                except StopAsyncIteration:
                    continue
                yield i, event
                pending[asyncio.ensure_future(anext(iters[i]))] = i
    finally:
        for fut in pending:
            fut.cancel()


async def collect(request: Request, gens: Sequence[Generation]
                  ) -> list[tuple[int, GenerationEvent]]:
    """Every event of non-streamed generations, ``(index in gens, event)`` in arrival
    order; ClientGoneError (and the generations cancelled) if the client hangs up first."""
    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                for gen in gens:
                    gen.cancel()
                return

    events = []
    watcher = asyncio.ensure_future(watch())
    try:
        async for item in merged([gen.events() for gen in gens]):
            events.append(item)
    finally:
        watcher.cancel()
        for gen in gens:
            gen.done()
    if any(gen.finish_reason == "cancelled" for gen in gens):
        raise ClientGoneError("the client closed the connection before the answer")
    return events


class StreamShape(Protocol):
    """How a route's chunks look; ``sse`` drives it over the generations of one call."""

    def feed(self, index: int, event: GenerationEvent) -> list[dict[str, Any]]:
        """Chunks for ``event`` of generation ``index`` (possibly none, to hold text back);
        a choice's first chunks open it (chat's role), its ``Finished`` closes it."""

    def usage_chunk(self) -> dict[str, Any]:
        """The usage chunk (``stream_options.include_usage``)."""


def sse_bytes(obj: Any, named: bool = False) -> bytes:
    """One server-sent event; ``named``: an ``event:`` line names its ``type`` (``error``
    for an error body), as the Responses API sends them."""
    head = b""
    if named:
        head = b"event: " + str(obj.get("type") or ("error" if "error" in obj else "message")
                                ).encode() + b"\n"
    return (head + b"data: " + json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
            .encode() + b"\n\n")


def sse(call: Call, gens: Sequence[Generation], shape: StreamShape, include_usage: bool,
        *, close: Callable[[], Awaitable[list[dict[str, Any]]]] | None = None,
        named: bool = False) -> StreamingResponse:
    """Server-sent events of ``gens`` (their events interleaved as they come) in ``shape``;
    an engine failure after the 200 was sent (a worker crash) ends the stream with an
    OpenAI error event, which clients raise.

    ``close``: once every generation ended, the last events (awaited before the call is
    settled, e.g. after storing the answer; a failure there ends the stream with an error
    event too). ``named``: the Responses API's framing, an ``event:`` line per event and
    no ``[DONE]``."""
    async def chunks() -> AsyncIterator[bytes]:
        tail: list[dict[str, Any]] = []
        try:
            async for index, event in merged([gen.events() for gen in gens]):
                for obj in shape.feed(index, event):
                    yield sse_bytes(obj, named)
            if close is not None:
                tail = await close()
        except Exception as exc:
            hit = mapped(exc)
            status, body = hit or (500, error_body("internal error; see the box's log",
                                                   "server_error"))
            if isinstance(exc, EngineError):
                log.error("stream of %s ended by %s (%d): %s", call.model,
                          type(exc).__name__, status, exc)
            else:  # a bug or a failed write, not the model: keep the traceback
                log.exception("stream of %s failed", call.model)
            await call.life.settle(call, 200)  # the 200 was sent; the row says what ran
            yield sse_bytes(body, named)
            return
        finally:
            for gen in gens:
                gen.done()
        if include_usage:
            yield sse_bytes(shape.usage_chunk(), named)
        await call.life.settle(call, 200)  # the client's last event proves its usage row
        for obj in tail:
            yield sse_bytes(obj, named)
        if not named:
            yield b"data: [DONE]\n\n"

    call.streaming = True
    headers = {**call.headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(chunks(), media_type="text/event-stream", headers=headers)


class Lifecycle:
    """Admission and settlement of inference requests (see the module docstring)."""

    def __init__(self, guard: LicenseGuard, registry: ModelRegistry, metrics: Metrics,
                 engines: dict[type, tuple[str, ...]], lines: SeatLines | None = None,
                 box: str = "", remotes: RemoteBook | None = None,
                 remote_client: RemoteClient | None = None) -> None:
        self.guard = guard
        self.remotes = remotes  # where requests may overflow to (appliance.egress)
        self.remote_client = remote_client
        self.box = box  # this box's name: usage rows of requests served here name it
        self.registry = registry
        self.metrics = metrics
        self.engines = engines  # which manifest engines make which engine type
        self.lines = lines or SeatLines(guard.limiter)

    def engines_for(self, kind: type) -> tuple[str, ...]:
        return self.engines.get(kind, ())

    async def admit(self, request: Request, headers: MutableHeaders) -> Call:
        """Authenticate and authorise the caller, then take one of its seat's slots."""
        key = bearer(request)
        ctx = await anyio.to_thread.run_sync(self.guard.check, key)
        headers.update(licence_headers(ctx))
        route = getattr(request.scope.get("route"), "path", request.url.path)
        call = Call(ctx, route, self, headers, slot_held=False)
        try:
            await self.lines.acquire(ctx)  # over max_concurrent: wait in the seat's line
        except RateLimited:
            # refused for the seat's limits: metered too, so the admin sees who hits them
            await self.settle(call, 429)
            raise
        call.slot_held = True
        return call

    async def admit_admin(self, request: Request) -> SeatContext:
        """An admin-role seat (401 without a valid key, 403 for a user-role key)."""
        return await anyio.to_thread.run_sync(self.guard.check_admin, bearer(request))

    async def settle(self, call: Call, status: int) -> None:
        """Once per call: end its generations and leases, free its slot, meter it."""
        if call.settled:
            return
        call.settled = True
        try:
            await call.stack.aclose()
        finally:
            if call.slot_held:
                call.slot_held = False
                self.guard.limiter.release(call.seat_id)
            if call.images and call.model:
                self.metrics.images.labels(call.model).inc(call.images)
            await anyio.to_thread.run_sync(self._record, call, status)

    async def one_token(self, model: str) -> None:
        """One token of real inference on ``model`` for the box itself (the update health
        probe): no seat, no usage row."""
        async with self.registry.use(model) as engine:
            if not isinstance(engine, LLMEngine):
                raise InvalidRequestError(f"model {model!r} is not a language model")
            tokens = await anyio.to_thread.run_sync(engine.tokenize, "ping")
            done = asyncio.Event()
            failure: list[Exception] = []
            loop = asyncio.get_running_loop()

            def sink(event: GenerationEvent) -> None:
                if isinstance(event, Failed):
                    failure.append(event.error)
                if isinstance(event, Finished | Failed):
                    loop.call_soon_threadsafe(done.set)

            handle = engine.submit(GenerationRequest(tuple(tokens), Sampling(max_tokens=1)),
                                   sink)
            try:
                await done.wait()
            finally:
                handle.cancel()
            if failure:
                raise failure[0]

    def _record(self, call: Call, status: int) -> None:
        try:
            self.guard.record_usage(
                call.ctx, route=call.route, model=call.model, status=status,
                tokens_in=call.prompt_tokens, tokens_out=call.completion_tokens,
                images=call.images, reservations=tuple(call.reservations),
                box=call.box or self.box)
        except Exception:
            log.exception("metering %s for seat %s failed", call.route, call.ctx.name)

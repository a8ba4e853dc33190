"""One replica of a model in the fleet: a Serve deployment that owns a supervised engine
worker on the box Ray placed it on (``LLMReplica`` for a language model, ``VisionReplica``
for OCR and detection).

The replica is the same worker a single box runs (``engines.worker``): the replica process
never loads llama.cpp itself, a worker crash restarts the worker with back-off, and the
events it streams are the engine's own ``TextDelta`` / ``Finished`` / ``Failed``, led by a
``Placement`` naming the box. Engine errors travel as ``Failed`` events, never as Ray task
errors, so the head maps them to HTTP exactly as it does on one box.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import ray
from ray import serve
from ray.serve.config import RequestRouterConfig

from engines.errors import EngineError
from engines.types import Failed, Finished, GenerationEvent, GenerationRequest, LLMInfo
from engines.vision.types import Detections, OcrResult
from engines.worker.proxies import WorkerLLMEngine, WorkerVisionEngine
from engines.worker.spec import NICE_ENV, EngineSpec
from engines.worker.supervisor import Supervisor
from fleet.node import BOX_ENV
from fleet.placement import ReplicaResources
from fleet.router import CLASS_PATH
from fleet.wire import Placement

log = logging.getLogger(__name__)



def _here() -> tuple[str, str]:
    """This replica's Ray node id and box name."""
    node_id = ray.get_runtime_context().get_node_id()
    return node_id, os.environ.get(BOX_ENV) or node_id[:12]


def _supervisor(spec: EngineSpec, ready_timeout: float, trust_dir: str | None, nice: int
                ) -> Supervisor:
    trust = None
    if trust_dir:
        from appliance.trust import TRUST_FILE, TrustFile

        try:
            Path(trust_dir).mkdir(parents=True, exist_ok=True)
            trust = TrustFile(Path(trust_dir) / TRUST_FILE)
        except OSError as exc:  # another box's layout: self-test every load instead
            log.warning("no trust file on this box (%s): %s", trust_dir, exc)
    # the worker runs nicer than the replica that forwards its events, as on one box
    return Supervisor(spec, trust=trust, ready_timeout=ready_timeout,
                      env={NICE_ENV: str(nice)})


class LLMReplica:
    """A language model on one box: every ``LLMEngine`` call, over Serve."""

    def __init__(self, spec: EngineSpec, ready_timeout: float = 900.0,
                 trust_dir: str | None = None, nice: int = 0) -> None:
        self.node_id, self.box = _here()
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.engine = WorkerLLMEngine(_supervisor(spec, ready_timeout, trust_dir, nice))
        log.info("replica of %s ready on box %s", spec.name, self.box)

    def info(self) -> LLMInfo:
        return self.engine.info

    def placement(self) -> Placement:
        return Placement(self.box, self.node_id, self.replica)

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        return self.engine.tokenize(text, special=special)

    def render_chat(self, messages: Sequence[dict[str, Any]],
                    tools: Sequence[dict[str, Any]] | None = None) -> str:
        return self.engine.render_chat(messages, tools)

    def chat_tokens(self, messages: Sequence[dict[str, Any]],
                    tools: Sequence[dict[str, Any]] | None = None) -> list[int]:
        return self.engine.chat_tokens(messages, tools)

    def json_schema_grammar(self, schema: dict) -> str:
        return self.engine.json_schema_grammar(schema)

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return self.engine.embed(texts)

    def stats(self) -> dict[str, float]:
        return self.engine.stats()

    async def generate(self, request: GenerationRequest
                       ) -> AsyncIterator[Placement | GenerationEvent]:
        """``Placement``, then the generation's events; closing the stream (the client hung
        up, the head cancelled) cancels the generation and frees its slot."""
        yield self.placement()
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[GenerationEvent] = asyncio.Queue()
        try:
            handle = self.engine.submit(
                request, lambda e: loop.call_soon_threadsafe(events.put_nowait, e))
        except EngineError as exc:
            yield Failed(exc)
            return
        done = False
        try:
            while not done:
                event = await events.get()
                done = isinstance(event, Finished | Failed)
                yield event
        finally:
            if not done:
                handle.cancel()

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.close()


class VisionReplica:
    """A vision model on one box: ``ocr`` and ``detect`` over Serve, each answer led by the
    ``Placement`` that names the box. Engine errors (a bad image, a full queue) are raised
    and reach the head as the cause of Ray's task error, which ``FleetVisionEngine``
    re-raises as they are."""

    def __init__(self, spec: EngineSpec, ready_timeout: float = 900.0,
                 trust_dir: str | None = None, nice: int = 0) -> None:
        self.node_id, self.box = _here()
        self.engine = WorkerVisionEngine(_supervisor(spec, ready_timeout, trust_dir, nice))
        log.info("vision replica of %s ready on box %s (%s)", spec.name, self.box,
                 self.engine.provider)

    def describe(self) -> dict[str, Any]:
        """What the head's registry shows: kind, provider really in use, skipped ones."""
        return {"kind": self.engine.kind, "provider": self.engine.provider,
                "provider_report": list(self.engine.provider_report)}

    def ocr(self, image: bytes) -> tuple[Placement, OcrResult]:
        return Placement(self.box, self.node_id), self.engine.ocr(image)

    def detect(self, image: bytes, conf: float, iou: float) -> tuple[Placement, Detections]:
        return Placement(self.box, self.node_id), self.engine.detect(image, conf, iou)

    def stats(self) -> dict[str, float]:
        return self.engine.stats()

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.close()


# A language model's replica forwards one event per token: Serve runs its calls on the
# replica's own event loop (not a second thread), with the per-request access log and the
# stderr copy of its logs off; the head's own usage rows and metrics record each request.
LLM_REPLICA_ENV = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
                   "RAY_SERVE_LOG_TO_STDERR": "0",
                   "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000"}


def deployment(name: str, *, min_replicas: int, max_replicas: int,
               target_ongoing_requests: float, max_ongoing_requests: int,
               resources: ReplicaResources, upscale_delay_s: float, downscale_delay_s: float,
               look_back_s: float = 30.0, replica: type = LLMReplica) -> Any:
    """The Serve deployment of one model, placed by ``resources`` (cores, a GPU share),
    scaled by queue length (down to none when ``min_replicas`` is 0; it starts with one, so
    the head can read the model's facts); language models are routed by prompt prefix
    (``fleet.router``) and run as ``LLM_REPLICA_ENV`` says, vision models by Serve's own
    router and defaults (their calls block for a whole image)."""
    llm = replica is LLMReplica
    return serve.deployment(
        replica, name=name,
        ray_actor_options={**resources.actor_options(),
                           **({"runtime_env": {"env_vars": LLM_REPLICA_ENV}} if llm else {})},
        max_ongoing_requests=max_ongoing_requests,
        autoscaling_config={
            "min_replicas": min_replicas, "initial_replicas": max(1, min_replicas),
            "max_replicas": max_replicas,
            "target_ongoing_requests": target_ongoing_requests,
            "upscale_delay_s": upscale_delay_s, "downscale_delay_s": downscale_delay_s,
            "look_back_period_s": look_back_s,
        },
        **({"request_router_config": RequestRouterConfig(request_router_class=CLASS_PATH),
            "logging_config": {"enable_access_log": False}} if llm else {}),
        health_check_period_s=2.0, health_check_timeout_s=10.0,
        graceful_shutdown_timeout_s=30.0,
    )

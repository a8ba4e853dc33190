"""The FastAPI application factory and its lifespan (store, licence guard, registry, reaper)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from appliance import __version__
from appliance.api import (
    admin_licence,
    admin_models,
    admin_remotes,
    admin_updates,
    errors,
    openai,
    ops,
    probe,
    responses,
    vision,
)
from appliance.lifecycle import Lifecycle
from appliance.loaders import loaders
from appliance.metrics import Metrics
from appliance.middleware import ObserveMiddleware
from appliance.modelstore import ModelStore
from appliance.registry import ModelRegistry
from appliance.remote_client import RemoteClient
from appliance.remotes import RemoteBook
from appliance.response_store import ResponseStore
from appliance.runtime import Runtime
from appliance.settings import Settings
from appliance.stats import LogRing, StatsSampler
from appliance.store import Store
from engines.base import LLMEngine
from engines.vision.base import VisionEngine
from licensing.guard import LicenseGuard, bootstrap_evaluation
from storage.db import share_lock

log = logging.getLogger(__name__)
# Which manifest engines make which kind of engine (a request for the wrong kind is a 400
# before anything is loaded).
ENGINE_KINDS: dict[type, tuple[str, ...]] = {LLMEngine: ("llama",),
                                             VisionEngine: ("ocr", "yolo", "onnx")}
REAP_EVERY_S = 30.0
EXPIRE_EVERY_S = 3600.0  # stored /v1/responses past their retention (also before each write)
CLOCK_TICK_S = 300.0


def create_app(settings: Settings, *, trusted_keys: Mapping[str, bytes] | None = None
               ) -> FastAPI:
    """Build the box's HTTP application from ``settings``; nothing is opened until startup.

    ``trusted_keys`` replaces the vendor keys the box was built with; only code can pass it
    (tests sign licences and bundles with keys they generate), never configuration.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ring = LogRing()
        logging.getLogger().addHandler(ring)
        settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        settings.data_dir.chmod(0o700)
        store = Store(settings.db_path)
        share_lock(store.db, store.lock)
        licensing = {"tolerance": int(settings.clock_tolerance_h * 3600),
                     "trusted_keys": trusted_keys, "state_dir": settings.state_dir,
                     "max_keys_per_seat": settings.max_keys_per_seat}
        key_path = bootstrap_evaluation(settings.data_dir, store.db, **licensing)
        if key_path is not None:
            log.warning("first start: the admin API key was written to %s", key_path)
        guard = LicenseGuard(settings.data_dir, store.db, **licensing)
        model_store = ModelStore(settings.model_root)
        model_store.ensure()
        model_store.cleanup_staging()
        engine_loaders = loaders(settings, _engine_events(app, guard))
        fleet = None
        if settings.fleet_enabled:  # fleet mode: models run as Serve replicas
            from fleet import app as fleet_app

            fleet = await asyncio.to_thread(fleet_app.start, settings)
            engine_loaders.update(fleet_app.loaders(settings, fleet))
        registry = ModelRegistry(model_store, engine_loaders,
                                 memory_budget=settings.memory_budget_mb << 20,
                                 idle_unload_s=settings.idle_unload_s)
        state = app.state
        state.store, state.registry, state.guard = store, registry, guard
        state.remotes = RemoteBook(store, settings.data_dir / "remotes")
        remote_client = RemoteClient()
        state.lifecycle = Lifecycle(guard, registry, state.metrics, ENGINE_KINDS,
                                    box=settings.box_name, remotes=state.remotes,
                                    remote_client=remote_client)
        state.runtime = Runtime(started_at=time.time(), sampler=sampler, log_ring=ring,
                                trusted_keys=trusted_keys, fleet=fleet)
        state.responses = ResponseStore(store, settings.responses_retention_days)
        expired = await asyncio.to_thread(state.responses.expire)
        if expired:
            log.info("deleted %d stored responses past their retention", expired)
        status = guard.status()
        if status.licence.evaluation:
            log.warning("running on an EVALUATION licence (%s)", status.licence.message)
        elif not status.licence.serves_inference or status.clock_locked:
            log.warning("inference is refused: %s", status.clock_locked or status.licence.message)
        tasks = [asyncio.create_task(_every(REAP_EVERY_S, registry.unload_idle), name="reaper"),
                 asyncio.create_task(_every(CLOCK_TICK_S, _tick(guard)), name="clock"),
                 asyncio.create_task(_every(EXPIRE_EVERY_S, _expire(state.responses)),
                                     name="responses-retention")]
        log.info("appliance %s ready on %s:%d with %d models; licence %s", __version__,
                 settings.host, settings.port, len(registry.names()), status.label)
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await registry.close()
            await remote_client.aclose()
            if fleet is not None:
                fleet.close()
            store.close()
            logging.getLogger().removeHandler(ring)

    app = FastAPI(title="Inference appliance", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.metrics = Metrics(lambda: _loaded(app))
    sampler = StatsSampler(app.state.metrics.registry)
    errors.register()(app)
    for router in (ops.router, probe.router, openai.router, responses.router, vision.router,
                   admin_models.router, admin_licence.router, admin_updates.router,
                   admin_remotes.router):
        app.include_router(router)
    if settings.fleet_enabled:
        from fleet import app as fleet_app

        fleet_app.install(app)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                           allow_methods=["*"], allow_headers=["*"])
    app.add_middleware(ObserveMiddleware, metrics=app.state.metrics,
                       max_body=settings.max_body_bytes, max_upload=settings.max_bundle_bytes)
    return app


def _loaded(app: FastAPI) -> dict[str, Any]:
    registry = getattr(app.state, "registry", None)
    return registry.loaded_engines() if registry is not None else {}


def _engine_events(app: FastAPI, guard: LicenseGuard) -> Any:
    """Worker crashes, restarts and fallbacks: a log line, a metric and an audit row each."""
    def hook(kind: str, details: dict[str, Any]) -> None:
        app.state.metrics.engine_events.labels(details.get("model", "?"), kind).inc()
        guard.audit.append("system", f"engine.{kind}", details)

    return hook


def _tick(guard: LicenseGuard) -> Any:
    async def tick() -> None:  # BEGIN IMMEDIATE and two fsyncs: never on the event loop
        await asyncio.to_thread(guard.refresh, True)

    return tick


def _expire(responses: ResponseStore) -> Any:
    async def expire() -> None:  # a DELETE on the store's lock: never on the event loop
        await asyncio.to_thread(responses.expire)

    return expire


async def _every(seconds: float, job: Any) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            await job()
        except Exception:
            log.exception("periodic job %s failed", getattr(job, "__name__", job))

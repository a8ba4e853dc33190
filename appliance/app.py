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
    admin_updates,
    errors,
    openai,
    ops,
    probe,
    vision,
)
from appliance.auth import finish_request, make_authenticate, make_authenticate_admin
from appliance.loaders import loaders
from appliance.metrics import Metrics
from appliance.middleware import ObserveMiddleware
from appliance.modelstore import ModelStore
from appliance.registry import ModelRegistry
from appliance.settings import Settings
from appliance.stats import LogRing, StatsSampler
from appliance.store import Store
from licensing.guard import LicenseGuard, bootstrap_evaluation
from licensing.storage import share_lock

log = logging.getLogger(__name__)
REAP_EVERY_S = 30.0
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
        if settings.fleet_enabled:  # fleet mode: language models run as Serve replicas
            from fleet import app as fleet_app

            fleet = await asyncio.to_thread(fleet_app.start, settings)
            engine_loaders["llama"] = fleet_app.llm_loader(settings, fleet)
        app.state.fleet = fleet
        registry = ModelRegistry(model_store, engine_loaders,
                                 memory_budget=settings.memory_budget_mb << 20,
                                 idle_unload_s=settings.idle_unload_s)
        state = app.state
        state.store, state.registry, state.guard, state.log_ring = store, registry, guard, ring
        state.started_at = time.time()
        state.authenticate = make_authenticate(guard)
        state.authenticate_admin = make_authenticate_admin(guard)
        state.licence_status = lambda: licence_json(guard)
        state.audit = lambda ctx, action, details: guard.audit.append(
            getattr(ctx, "name", "system"), action, details)
        status = guard.status()
        if status.licence.evaluation:
            log.warning("running on an EVALUATION licence (%s)", status.licence.message)
        elif not status.licence.serves_inference or status.clock_locked:
            log.warning("inference is refused: %s", status.clock_locked or status.licence.message)
        tasks = [asyncio.create_task(_every(REAP_EVERY_S, registry.unload_idle), name="reaper"),
                 asyncio.create_task(_every(CLOCK_TICK_S, _tick(guard)), name="clock")]
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
            if fleet is not None:
                fleet.close()
            store.close()
            logging.getLogger().removeHandler(ring)

    app = FastAPI(title="Inference appliance", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.trusted_keys = trusted_keys
    app.state.metrics = Metrics(lambda: _loaded(app))
    app.state.sampler = StatsSampler(app.state.metrics.registry)
    app.state.on_request_done = lambda scope, path, status, elapsed: _record(
        app, scope, path, status, elapsed)
    errors.register()(app)
    app.state.probe_nonces = set()  # update health probes answered (each nonce once)
    for router in (ops.router, probe.router, openai.router, vision.router, admin_models.router,
                   admin_licence.router, admin_updates.router):
        app.include_router(router)
    if settings.fleet_enabled:
        from fleet import app as fleet_app

        fleet_app.install(app)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                           allow_methods=["*"], allow_headers=["*"])
    app.add_middleware(ObserveMiddleware, state=app.state, max_body=settings.max_body_bytes,
                       max_upload=settings.max_bundle_bytes)
    return app


def licence_json(guard: LicenseGuard) -> dict[str, Any]:
    """The licence as the admin API and TUI show it."""
    st = guard.status()
    lic = st.licence
    state = "locked" if st.clock_locked else ("evaluation" if lic.evaluation and
                                              lic.state == "valid" else lic.state)
    return {
        "state": state, "label": st.label, "licence_id": lic.licence_id,
        "customer": lic.customer, "seats": lic.seats, "seats_used": st.seats_used,
        "entitlements": {"models": list(lic.models), "features": list(lic.features)},
        "valid_from": lic.valid_from, "expires_at": lic.expires_at,
        "days_left": lic.days_left, "grace_days_left": lic.grace_days_left,
        "evaluation": lic.evaluation, "fingerprint_match": lic.fingerprint,
        "clock_locked": st.clock_locked, "message": st.clock_locked or lic.message,
    }


def _loaded(app: FastAPI) -> dict[str, Any]:
    registry = getattr(app.state, "registry", None)
    return registry.loaded_engines() if registry is not None else {}


def _record(app: FastAPI, scope: Any, path: str, status: int, elapsed: float) -> None:
    state = scope.get("state") or {}
    guard = getattr(app.state, "guard", None)
    if guard is not None:
        finish_request(guard, scope, path, status)
    store = getattr(app.state, "store", None)
    if store is None or not path.startswith("/v1"):
        return
    usage = state.get("usage")
    ctx = state.get("seat_ctx")
    store.log_request(route=path, model=getattr(usage, "model", None), status=status,
                      latency_ms=elapsed * 1000,
                      prompt_tokens=getattr(usage, "prompt_tokens", 0),
                      completion_tokens=getattr(usage, "completion_tokens", 0),
                      seat_id=getattr(ctx, "seat_id", None))


def _engine_events(app: FastAPI, guard: LicenseGuard) -> Any:
    """Worker crashes, restarts and fallbacks: a log line, a metric and an audit row each."""
    def hook(kind: str, details: dict[str, Any]) -> None:
        app.state.metrics.engine_events.labels(details.get("model", "?"), kind).inc()
        guard.audit.append("system", f"engine.{kind}", details)

    return hook


def _tick(guard: LicenseGuard) -> Any:
    async def tick() -> None:
        guard.refresh(force=True)

    return tick


async def _every(seconds: float, job: Any) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            await job()
        except Exception:
            log.exception("periodic job %s failed", getattr(job, "__name__", job))

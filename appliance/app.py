"""The FastAPI application factory and its lifespan (store, registry, metrics, reaper)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware

from appliance import __version__
from appliance.api import errors, openai, ops
from appliance.loaders import loaders
from appliance.metrics import Metrics
from appliance.middleware import ObserveMiddleware
from appliance.modelstore import ModelStore
from appliance.registry import ModelRegistry
from appliance.settings import Settings
from appliance.store import Store

log = logging.getLogger(__name__)
REAP_EVERY_S = 30.0


async def _open(request: Request) -> None:
    """Authentication when no licence guard is installed: every caller is anonymous."""
    return None


def create_app(settings: Settings) -> FastAPI:
    """Build the box's HTTP application from ``settings``; nothing is opened until startup."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        store = Store(settings.db_path)
        model_store = ModelStore(settings.model_root)
        model_store.ensure()
        model_store.cleanup_staging()
        registry = ModelRegistry(model_store, loaders(settings),
                                 memory_budget=settings.memory_budget_mb << 20,
                                 idle_unload_s=settings.idle_unload_s)
        app.state.store = store
        app.state.registry = registry
        reaper = asyncio.create_task(_reap(registry), name="idle-reaper")
        log.info("appliance %s ready on %s:%d with %d models", __version__, settings.host,
                 settings.port, len(registry.names()))
        try:
            yield
        finally:
            reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reaper
            await registry.close()
            store.close()

    app = FastAPI(title="Inference appliance", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.authenticate = _open
    app.state.metrics = Metrics(lambda: _loaded(app))
    app.state.on_request_done = lambda scope, path, status, elapsed: _record(
        app, scope, path, status, elapsed)
    errors.register()(app)
    app.include_router(ops.router)
    app.include_router(openai.router)
    if importlib.util.find_spec("appliance.api.vision") is not None:
        from appliance.api import vision

        app.include_router(vision.router)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                           allow_methods=["*"], allow_headers=["*"])
    app.add_middleware(ObserveMiddleware, state=app.state, max_body=settings.max_body_bytes)
    return app


def _loaded(app: FastAPI) -> dict[str, Any]:
    registry = getattr(app.state, "registry", None)
    return registry.loaded_engines() if registry is not None else {}


def _record(app: FastAPI, scope: Any, path: str, status: int, elapsed: float) -> None:
    store = getattr(app.state, "store", None)
    if store is None or not path.startswith("/v1"):
        return
    usage = (scope.get("state") or {}).get("usage")
    seat = (scope.get("state") or {}).get("seat_id")
    store.log_request(route=path, model=getattr(usage, "model", None), status=status,
                      latency_ms=elapsed * 1000,
                      prompt_tokens=getattr(usage, "prompt_tokens", 0),
                      completion_tokens=getattr(usage, "completion_tokens", 0), seat_id=seat)


async def _reap(registry: ModelRegistry) -> None:
    while True:
        await asyncio.sleep(REAP_EVERY_S)
        try:
            gone = await registry.unload_idle()
            if gone:
                log.info("unloaded idle models: %s", ", ".join(gone))
        except Exception:
            log.exception("idle reaper failed")

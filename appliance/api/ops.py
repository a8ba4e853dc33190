"""Operations endpoints: liveness, readiness and Prometheus metrics.

``/healthz`` and ``/readyz`` answer anyone and say nothing about models or traffic;
``/metrics`` (model names, traffic per route) needs an admin key unless the admin set
``metrics_public``.
"""

from __future__ import annotations

import anyio
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from appliance.deps import LifecycleDep, MetricsDep, RegistryDep, SettingsDep, StoreDep
from appliance.errors import ApplianceError

router = APIRouter(tags=["ops"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive and its event loop answers."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(store: StoreDep, registry: RegistryDep, settings: SettingsDep) -> Response:
    """Ready to serve: the database answers and the default model is present and intact."""
    checks: dict[str, str] = {}
    checks["store"] = "ok" if await anyio.to_thread.run_sync(store.healthy) else "unavailable"
    try:
        entry = registry.entry(settings.default_llm)
        path = registry.store.path(entry.manifest.name)
        missing = [f.path for f in entry.manifest.files
                   if not (path / f.path).is_file() or (path / f.path).stat().st_size != f.size]
        checks["default_model"] = "ok" if not missing else f"damaged: {', '.join(missing)}"
    except ApplianceError as exc:
        checks["default_model"] = str(exc)
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ready" if ok else "not ready", "checks": checks},
                        status_code=200 if ok else 503)


@router.get("/metrics")
async def metrics(request: Request, m: MetricsDep, settings: SettingsDep,
                  life: LifecycleDep) -> Response:
    """Prometheus text exposition; an admin key unless ``metrics_public`` is set."""
    if not settings.metrics_public:
        await life.admit_admin(request)
    # engine gauges come from the worker processes: collect off the event loop
    body = await anyio.to_thread.run_sync(generate_latest, m.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)

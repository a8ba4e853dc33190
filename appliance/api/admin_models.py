"""Admin API: box status, models, logs (admin-role keys only)."""

from __future__ import annotations

import time
from typing import Any

import anyio
from fastapi import APIRouter, Query

from appliance import __version__
from appliance.api.admin_licence import licence_json
from appliance.deps import AdminDep, GuardDep, RegistryDep, RuntimeDep

router = APIRouter(prefix="/admin", tags=["admin"])


def _model(registry: Any, name: str) -> dict[str, Any]:
    for s in registry.status():
        if s["name"] == name:
            return s
    registry.entry(name)  # raises ModelNotFoundError
    return {}


@router.get("/status")
async def status(registry: RegistryDep, guard: GuardDep, runtime: RuntimeDep,
                 admin: AdminDep) -> dict[str, Any]:
    """Everything the dashboard shows, in one call."""
    return {"version": __version__, "uptime_s": time.time() - runtime.started_at,
            "licence": await anyio.to_thread.run_sync(licence_json, guard),
            "models": registry.status(),
            "queues": await anyio.to_thread.run_sync(_queues, registry),
            # engine gauges (worker round trips) and nvidia-smi: never on the event loop
            "stats": await anyio.to_thread.run_sync(runtime.sampler.sample)}


def _queues(registry: Any) -> dict[str, dict[str, int]]:
    """Requests waiting per seat for each loaded LLM (the fair-share queue's view)."""
    out = {}
    for name, engine in registry.loaded_engines().items():
        waiting = getattr(engine, "waiting", None)
        if callable(waiting):
            try:
                out[name] = waiting()
            except Exception:  # a worker restarting: nothing to show for it now
                out[name] = {}
    return out


@router.get("/models")
async def models(registry: RegistryDep, admin: AdminDep) -> list[dict[str, Any]]:
    registry.refresh()
    return registry.status()


@router.post("/models/{name}/load")
async def load(name: str, registry: RegistryDep, admin: AdminDep) -> dict[str, Any]:
    await registry.load(name)
    return _model(registry, name)


@router.post("/models/{name}/unload")
async def unload(name: str, registry: RegistryDep, admin: AdminDep) -> dict[str, Any]:
    await registry.unload(name)
    return _model(registry, name)


@router.post("/models/{name}/verify")
async def verify(name: str, registry: RegistryDep, admin: AdminDep) -> dict[str, Any]:
    registry.entry(name)
    problems = await anyio.to_thread.run_sync(registry.store.verify, name)
    return {"name": name, "ok": not problems, "problems": problems}


@router.delete("/models/{name}")
async def remove(name: str, registry: RegistryDep, guard: GuardDep,
                 admin: AdminDep) -> dict[str, Any]:
    await registry.remove(name)
    await anyio.to_thread.run_sync(guard.audit.append, admin.name, "model.removed",
                                   {"name": name})
    return {"removed": name}


@router.get("/logs")
async def logs(runtime: RuntimeDep, admin: AdminDep, limit: int = Query(100, ge=1, le=500),
               q: str | None = Query(None, max_length=200)) -> list[dict[str, Any]]:
    """Recent warnings and errors of this process."""
    return runtime.log_ring.tail(limit, q)

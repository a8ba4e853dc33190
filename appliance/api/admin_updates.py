"""Admin API for offline update bundles: inspect, apply, status, history, rollback.

An uploaded bundle is streamed to ``<data_dir>/updates/`` with a size cap, then verified
completely by ``firmware`` before anything is installed. Model packs and config bundles
are applied in-process (models appear in ``/v1/models`` without a restart). A release
replaces the running software, so it is handed to a detached ``appliance-update apply``
process that survives this server's restart and records the outcome in the history.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from appliance.deps import AdminDep, GuardDep, RegistryDep, RuntimeDep, SettingsDep
from appliance.modelstore import ModelStorePacks
from appliance.runtime import Runtime
from appliance.settings import Settings
from firmware.apply import Updater
from firmware.bundle import Limits
from firmware.errors import BundleError, LimitError

router = APIRouter(prefix="/admin/updates", tags=["admin"])


def _updater(runtime: Runtime, settings: Settings, guard: Any, actor: str) -> Updater:
    def audit(action: str, details: dict[str, Any]) -> None:
        guard.audit.append(actor, action, details)

    return Updater(settings.data_dir, audit=audit, packs=ModelStorePacks(settings.model_root),
                   trusted=runtime.trusted_keys,
                   config_path=settings.data_dir / "appliance.toml")


async def _receive(request: Request, settings: Settings) -> Path:
    """Stream the request body into a private temp file, refusing past the bundle cap."""
    limit = min(settings.max_bundle_bytes,
                Limits().max_total_size + Limits().max_manifest + 4096)
    incoming = settings.data_dir / "updates"
    incoming.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, name = tempfile.mkstemp(dir=incoming, prefix="upload-", suffix=".bundle")
    size = 0
    try:
        with os.fdopen(fd, "wb") as fh:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise LimitError(f"bundle larger than {limit} bytes")
                await anyio.to_thread.run_sync(fh.write, chunk)  # a slow disk: off the loop
        if size == 0:
            raise LimitError("send the bundle file as the request body")
        return Path(name)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


@router.get("")
async def status(settings: SettingsDep, guard: GuardDep, runtime: RuntimeDep,
                 admin: AdminDep) -> dict[str, Any]:
    up = _updater(runtime, settings, guard, admin.name)
    return (await anyio.to_thread.run_sync(up.status)).to_json()


@router.get("/history")
async def history(settings: SettingsDep, guard: GuardDep, runtime: RuntimeDep,
                  admin: AdminDep, limit: int = Query(50, ge=1, le=500)) -> list[dict[str, Any]]:
    up = _updater(runtime, settings, guard, admin.name)
    return [h.to_json() for h in await anyio.to_thread.run_sync(up.history, limit)]


@router.post("/inspect")
async def inspect(request: Request, settings: SettingsDep, guard: GuardDep, runtime: RuntimeDep,
                  admin: AdminDep) -> dict[str, Any]:
    """Signature, manifest and what applying would change; installs nothing."""
    path = await _receive(request, settings)
    try:
        up = _updater(runtime, settings, guard, admin.name)
        found = await anyio.to_thread.run_sync(up.inspect, path)
    finally:
        path.unlink(missing_ok=True)
    m = found.manifest
    changes = [f"{m.type} {m.version}: {p.path} ({p.size} bytes)" for p in m.payloads]
    return {"manifest": m.to_json(), "key_id": found.key_id, "signature": "valid",
            "payloads_ok": found.payloads_ok, "problem": found.problem, "changes": changes}


@router.post("/apply")
async def apply(request: Request, settings: SettingsDep, guard: GuardDep, runtime: RuntimeDep,
                registry: RegistryDep, admin: AdminDep) -> Any:
    """Verify and apply a bundle; 202 for a release (finishes in a detached process)."""
    path = await _receive(request, settings)
    up = _updater(runtime, settings, guard, admin.name)
    detached = False
    try:
        found = await anyio.to_thread.run_sync(up.inspect, path)
        if found.problem:
            raise BundleError(found.problem)
        if found.manifest.type == "release":
            _detach_release(path, settings)
            detached = True
            return JSONResponse({"outcome": "started", "version": found.manifest.version,
                                 "reason": "release is being applied; follow "
                                           "GET /admin/updates/history"}, status_code=202)
        result = await anyio.to_thread.run_sync(up.apply, path)
    finally:
        if not detached:
            path.unlink(missing_ok=True)
    registry.refresh()
    return result.to_json()


def _detach_release(path: Path, settings: Settings) -> None:
    log_path = settings.data_dir / "updates" / (path.stem + ".log")
    with log_path.open("ab") as log:
        subprocess.Popen(
            [sys.executable, "-m", "firmware.cli", "--data-dir", str(settings.data_dir),
             "apply", str(path), "--service", "systemd",
             "--health-url", f"http://127.0.0.1:{settings.port}"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)


@router.post("/rollback")
async def rollback(settings: SettingsDep, guard: GuardDep, runtime: RuntimeDep,
                   admin: AdminDep) -> dict[str, Any]:
    up = _updater(runtime, settings, guard, admin.name)
    return (await anyio.to_thread.run_sync(up.rollback, "release")).to_json()

"""FastAPI dependencies as ``Annotated`` aliases, so handler signatures read as documentation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import anyio
from fastapi import Depends, Request, Response

from appliance.lifecycle import Call, Lifecycle, status_of
from appliance.metrics import Metrics
from appliance.registry import ModelRegistry
from appliance.remotes import RemoteBook
from appliance.response_store import ResponseStore
from appliance.runtime import Runtime
from appliance.settings import Settings
from appliance.store import Store
from licensing.guard import LicenseGuard, SeatContext


def _registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


def _metrics(request: Request) -> Metrics:
    return request.app.state.metrics


def _store(request: Request) -> Store:
    return request.app.state.store


def _responses(request: Request) -> ResponseStore:
    return request.app.state.responses


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _guard(request: Request) -> LicenseGuard:
    return request.app.state.guard


def _runtime(request: Request) -> Runtime:
    return request.app.state.runtime


def _remotes(request: Request) -> RemoteBook:
    return request.app.state.remotes


def _lifecycle(request: Request) -> Lifecycle:
    return request.app.state.lifecycle


async def _admitted(request: Request, response: Response) -> AsyncIterator[Call]:
    """The admitted request (401/403/429 otherwise). Settled at the latest once its last
    byte was sent, whether it succeeded, failed or its client went away."""
    life: Lifecycle = request.app.state.lifecycle
    call = await life.admit(request, response.headers)
    status = 200
    try:
        yield call
    except BaseException as exc:
        status = status_of(exc)
        raise
    finally:
        with anyio.CancelScope(shield=True):
            await life.settle(call, status)


async def _call(call: Annotated[Call, Depends(_admitted)]) -> AsyncIterator[Call]:
    """Settle an answer before it is sent (so the client's 200 proves its usage row); a
    stream settles itself before its last event."""
    status = 200
    try:
        yield call
    except BaseException as exc:
        status = status_of(exc)
        raise
    finally:
        if not call.streaming:
            with anyio.CancelScope(shield=True):
                await call.life.settle(call, status)


async def _admin(request: Request) -> SeatContext:
    """An admin-role seat (401 without a valid key, 403 for a user-role key)."""
    return await request.app.state.lifecycle.admit_admin(request)


RegistryDep = Annotated[ModelRegistry, Depends(_registry)]
MetricsDep = Annotated[Metrics, Depends(_metrics)]
StoreDep = Annotated[Store, Depends(_store)]
ResponsesDep = Annotated[ResponseStore, Depends(_responses)]
SettingsDep = Annotated[Settings, Depends(_settings)]
GuardDep = Annotated[LicenseGuard, Depends(_guard)]
LifecycleDep = Annotated[Lifecycle, Depends(_lifecycle)]
RuntimeDep = Annotated[Runtime, Depends(_runtime)]
RemotesDep = Annotated[RemoteBook, Depends(_remotes)]
CallDep = Annotated[Call, Depends(_call, scope="function")]
AdminDep = Annotated[SeatContext, Depends(_admin)]

"""FastAPI dependencies as ``Annotated`` aliases, so handler signatures read as documentation."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from appliance.auth import Caller
from appliance.metrics import Metrics
from appliance.registry import ModelRegistry
from appliance.settings import Settings
from appliance.store import Store
from licensing.guard import LicenseGuard, SeatContext


def _registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


def _metrics(request: Request) -> Metrics:
    return request.app.state.metrics


def _store(request: Request) -> Store:
    return request.app.state.store


def _settings(request: Request) -> Settings:
    return request.app.state.settings


async def _caller(request: Request) -> Caller:
    """The authenticated seat of this request (the licence guard decides; raises 401/403/429)."""
    return await request.app.state.authenticate(request)


async def _admin(request: Request) -> SeatContext:
    """An admin-role seat (401 without a valid key, 403 for a user-role key)."""
    return await request.app.state.authenticate_admin(request)


def _guard(request: Request) -> LicenseGuard:
    return request.app.state.guard


RegistryDep = Annotated[ModelRegistry, Depends(_registry)]
MetricsDep = Annotated[Metrics, Depends(_metrics)]
StoreDep = Annotated[Store, Depends(_store)]
SettingsDep = Annotated[Settings, Depends(_settings)]
CallerDep = Annotated[Caller, Depends(_caller)]
AdminDep = Annotated[SeatContext, Depends(_admin)]
GuardDep = Annotated[LicenseGuard, Depends(_guard)]

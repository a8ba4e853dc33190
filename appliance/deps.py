"""FastAPI dependencies as ``Annotated`` aliases, so handler signatures read as documentation."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from appliance.metrics import Metrics
from appliance.registry import ModelRegistry
from appliance.settings import Settings
from appliance.store import Store


def _registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


def _metrics(request: Request) -> Metrics:
    return request.app.state.metrics


def _store(request: Request) -> Store:
    return request.app.state.store


def _settings(request: Request) -> Settings:
    return request.app.state.settings


async def _caller(request: Request) -> Any:
    """The authenticated seat of this request (the licence guard decides; raises 401/403/429)."""
    return await request.app.state.authenticate(request)


RegistryDep = Annotated[ModelRegistry, Depends(_registry)]
MetricsDep = Annotated[Metrics, Depends(_metrics)]
StoreDep = Annotated[Store, Depends(_store)]
SettingsDep = Annotated[Settings, Depends(_settings)]
CallerDep = Annotated[Any, Depends(_caller)]

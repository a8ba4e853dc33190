"""Fixtures of the TUI tests: an app over the in-memory fake box."""

from __future__ import annotations

import pytest

from tests.tui.fake import FakeBox
from tui.app import AdminApp


@pytest.fixture
def anyio_backend() -> str:
    """Async tests run on asyncio (anyio's pytest plugin, shipped with httpx's anyio)."""
    return "asyncio"


@pytest.fixture
def fake() -> FakeBox:
    return FakeBox()


@pytest.fixture
def app(fake: FakeBox) -> AdminApp:
    """An app that polls once at start (no timer ticks during a test)."""
    return AdminApp(fake, refresh_s=3600)


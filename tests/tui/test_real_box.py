"""The TUI against the real box (`appliance serve` with SmolLM2) and the official openai client.

These follow docs/admin-api.md. While the box has no admin API yet (GET /admin/status
answers 404) they skip at run time, saying so; they never fall back to a fake.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from textual.widgets import DataTable, Input

from tests.conftest import LLM
from tests.tui.support import settle, wait_until
from tui.app import AdminApp
from tui.client import AdminClient, BoxError
from tui.screens.confirm import ConfirmScreen
from tui.screens.key_shown import KeyShownScreen
from tui.screens.seats import SeatsScreen

pytestmark = [pytest.mark.slow, pytest.mark.anyio]
SIZE = (120, 40)


@pytest.fixture
def admin_box(box: Any) -> Any:
    """The session's real box, or a skip while its /admin/status route does not exist."""
    answer = httpx.get(box.base_url + "/admin/status", timeout=10,
                       headers={"Authorization": f"Bearer {box.api_key}"})
    if answer.status_code == 404:
        pytest.skip("the box has no admin API yet: GET /admin/status answers 404")
    return box


@pytest.fixture
def admin_client(admin_box: Any) -> Any:
    client = AdminClient(admin_box.base_url, admin_box.api_key, timeout=30)
    yield client
    client.close()


def chat(base_url: str, key: str) -> str:
    oa = openai.OpenAI(base_url=base_url + "/v1", api_key=key, max_retries=0)
    reply = oa.chat.completions.create(model=LLM, temperature=0, max_tokens=4,
                                       messages=[{"role": "user", "content": "Say hi"}])
    return reply.choices[0].message.content or ""


def test_client_reports_the_box_message(admin_box: Any, admin_client: AdminClient,
                                        tmp_path: Path) -> None:
    wrong = AdminClient(admin_box.base_url, "sk-not-a-key")
    with pytest.raises(BoxError) as refused:
        wrong.status()
    wrong.close()
    assert refused.value.status == 401 and refused.value.message
    status = admin_client.status()
    assert {"version", "uptime_s", "licence", "models", "stats"} <= status.keys()
    # a bundle that is not one: streamed up, refused with the box's explanation
    junk = tmp_path / "junk.bundle"
    junk.write_bytes(os.urandom(300_000))
    seen: list[int] = []
    with pytest.raises(BoxError) as bad:
        admin_client.inspect_update(junk, lambda sent, total: seen.append(sent))
    assert 400 <= bad.value.status < 500 and bad.value.message
    assert seen[-1] == 300_000


async def test_dashboard_counter_moves_with_real_requests(admin_box: Any,
                                                          admin_client: AdminClient) -> None:
    app = AdminApp(admin_client, refresh_s=0.5)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.status is not None, timeout=15)
        before = int(app.status["stats"]["requests_total"])
        for _ in range(2):
            await asyncio.to_thread(chat, admin_box.base_url, admin_box.api_key)
        tile = app.screen.query_one("#tile-requests")
        await wait_until(pilot, lambda: int(app.status["stats"]["requests_total"]) >= before + 2,
                         timeout=15)
        await settle(pilot)
        assert f"{int(app.status['stats']['requests_total'])} total" in tile.value


async def test_seat_and_key_made_in_the_tui_work_until_revoked(
        admin_box: Any, admin_client: AdminClient) -> None:
    name = f"tui-{uuid.uuid4().hex[:6]}"
    app = AdminApp(admin_client, refresh_s=5)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("s", "n")
        await settle(pilot)
        await pilot.press(*name, "enter", "enter")
        await wait_until(pilot, lambda: isinstance(app.screen, SeatsScreen)
                         and any(s["name"] == name for s in app.screen._seats.values()),
                         timeout=15)
        await settle(pilot)
        seats = app.screen.query_one("#seats", DataTable)
        assert seats.get_row_at(seats.cursor_row)[1] == name  # the new seat is highlighted
        await pilot.press("k")
        await wait_until(pilot, lambda: isinstance(app.screen, KeyShownScreen), timeout=15)
        secret = app.screen.query_one("#secret", Input).value
        await pilot.press("escape")
        await settle(pilot)

        assert await asyncio.to_thread(chat, admin_box.base_url, secret) is not None

        keys = app.screen.query_one("#keys", DataTable)
        await wait_until(pilot, lambda: keys.row_count == 1, timeout=15)
        await pilot.press("r")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await wait_until(pilot, lambda: "revoked" in [str(c) for c in keys.get_row_at(0)],
                         timeout=15)

    with pytest.raises(openai.AuthenticationError):
        await asyncio.to_thread(chat, admin_box.base_url, secret)

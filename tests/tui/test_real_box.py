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
from textual.widgets import DataTable, Input, Label

from tests.conftest import LLM
from tests.tui.support import settle, wait_until
from tui.app import AdminApp
from tui.client import AdminClient, BoxError
from tui.screens.confirm import ConfirmScreen
from tui.screens.fleet import NOT_A_HEAD, FleetScreen
from tui.screens.key_shown import KeyShownScreen
from tui.screens.seats import SeatsScreen

pytestmark = [pytest.mark.slow, pytest.mark.anyio]
SIZE = (120, 40)


@pytest.fixture
def admin_box(box: Any) -> Any:
    """The session's real box; its admin API must answer (a 404 fails, never skips)."""
    answer = httpx.get(box.base_url + "/admin/status", timeout=10,
                       headers={"Authorization": f"Bearer {box.api_key}"})
    assert answer.status_code == 200, answer.text
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


async def test_fleet_screen_on_a_single_box_says_it_is_not_a_fleet_head(
        admin_box: Any, admin_client: AdminClient) -> None:
    assert admin_client.fleet() is None  # the box answers 404: no fleet route
    app = AdminApp(admin_client, refresh_s=5)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("F")
        await settle(pilot)
        assert isinstance(app.screen, FleetScreen)
        note = app.screen.query_one("#fleet-note", Label)
        await wait_until(pilot, lambda: str(note.render()) == NOT_A_HEAD, timeout=15)
        assert not app.screen.query_one("#nodes", DataTable).display


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


PACK = "smollm2-tui-pack"


@pytest.fixture(scope="module")
def own_box(model_store: Any, vendor_key: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A box of this module's own (its model store holds hard links to SmolLM2 only), so a
    model-pack import neither fills the shared test store nor meets another test's version
    floor. It trusts the test run's vendor key."""
    from tests.conftest import Box

    tmp = tmp_path_factory.mktemp("tui-own-box")
    models = tmp / "models"
    src = model_store.path(LLM)
    (models / LLM).mkdir(parents=True)
    for f in src.iterdir():
        _link(f, models / LLM / f.name)
    server = Box(tmp / "data", models,
                 env={"TEST_TRUSTED_KEYS_FILE": str(vendor_key.trusted_file)})
    answer = httpx.get(server.base_url + "/admin/status", timeout=10,
                       headers={"Authorization": f"Bearer {server.api_key}"})
    if answer.status_code != 200:
        server.stop()
    assert answer.status_code == 200, answer.text
    yield server
    server.stop()


def _link(src: Path, dst: Path) -> None:
    import shutil

    try:
        os.link(src, dst)
    except OSError:
        shutil.copy(src, dst)


@pytest.fixture(scope="module")
def pack_bundle(model_store: Any, vendor_key: Any,
                tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A signed model-pack bundle holding SmolLM2 under another name."""
    import json

    from firmware.build import build_bundle, collect_payloads

    tmp = tmp_path_factory.mktemp("tui-pack")
    pack = tmp / PACK
    pack.mkdir()
    src = model_store.path(LLM)
    manifest = json.loads((src / "manifest.json").read_text())
    manifest["name"] = PACK
    for f in manifest["files"]:
        _link(src / f["path"], pack / f["path"])
    (pack / "manifest.json").write_text(json.dumps(manifest))
    out = tmp / "models-1.0.0.bundle"
    build_bundle(out, bundle_type="models", version="1.0.0", key=vendor_key.key,
                 files=collect_payloads("models", [pack]), expires="2099-01-01T00:00:00Z")
    return out


async def test_import_model_pack_from_the_models_screen(own_box: Any, pack_bundle: Path) -> None:
    client = AdminClient(own_box.base_url, own_box.api_key, timeout=120)
    progress: list[int] = []
    apply_update = client.apply_update

    def recording_apply(file: Any, callback: Any = None) -> Any:
        def both(sent: int, total: int) -> None:
            progress.append(sent)
            callback(sent, total)

        return apply_update(file, both)

    client.apply_update = recording_apply  # type: ignore[method-assign]  # observe, not replace
    app = AdminApp(client, refresh_s=5)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await pilot.press("m")
            await settle(pilot)
            table = app.screen.query_one(DataTable)
            assert PACK not in [str(table.get_row_at(i)[0]) for i in range(table.row_count)]
            await pilot.press("i")
            await settle(pilot)
            app.screen.query_one(Input).value = str(pack_bundle)
            await pilot.press("enter")
            await wait_until(pilot, lambda: any("Import success" in str(n.message)
                                                for n in app._notifications), timeout=60)
            await settle(pilot)
            table = app.screen.query_one(DataTable)
            assert PACK in [str(table.get_row_at(i)[0]) for i in range(table.row_count)]
    finally:
        client.close()
    size = pack_bundle.stat().st_size
    assert progress[0] == 0 and progress[-1] == size and len(progress) > 10  # streamed
    oa = openai.OpenAI(base_url=own_box.base_url + "/v1", api_key=own_box.api_key,
                       max_retries=0)
    reply = await asyncio.to_thread(
        lambda: oa.completions.create(model=PACK, prompt="Hello", max_tokens=3))
    assert reply.usage.completion_tokens == 3

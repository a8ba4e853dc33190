"""Interaction tests with Pilot over the in-memory fake box."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import DataTable, Input, Label, Static

from tests.tui.fake import FakeBox
from tests.tui.support import settle, wait_until
from tui.app import AdminApp
from tui.client import AdminClient, BoxError
from tui.screens.bundle_review import BundleReviewScreen
from tui.screens.confirm import ConfirmScreen
from tui.screens.dashboard import DashboardScreen
from tui.screens.fleet import NOT_A_HEAD, FleetScreen
from tui.screens.key_shown import KeyShownScreen
from tui.screens.licence import LicenceScreen
from tui.screens.logs import LogsScreen
from tui.screens.models import ModelsScreen
from tui.screens.new_seat import NewSeatScreen
from tui.screens.path_prompt import PathPrompt
from tui.screens.seats import SeatsScreen
from tui.screens.updates import UpdatesScreen
from tui.widgets.connection_banner import ConnectionBanner

SIZE = (120, 40)
pytestmark = pytest.mark.anyio


def messages(app: AdminApp) -> list[str]:
    """Every notification shown so far."""
    return [n.message for n in app._notifications]


async def enter_path(pilot: Any, path: Path) -> None:
    """Fill the path prompt at once (typing 60 characters one by one is slow) and submit."""
    pilot.app.screen.query_one(Input).value = str(path)
    await pilot.press("enter")


def text_of(widget: Static) -> str:
    return str(widget.render())


def test_fake_has_the_client_interface() -> None:
    """The fake is only useful if it has the real client's methods and signatures."""
    for name, method in inspect.getmembers(AdminClient, inspect.isfunction):
        if name.startswith("_"):
            continue
        fake_method = getattr(FakeBox, name, None)
        assert fake_method is not None, f"FakeBox lacks {name}"
        real = [p.name for p in inspect.signature(method).parameters.values()]
        fake = [p.name for p in inspect.signature(fake_method).parameters.values()]
        assert real == fake, f"{name}: {real} != {fake}"


async def test_navigate_every_screen(app: AdminApp) -> None:
    screens = {"d": DashboardScreen, "m": ModelsScreen, "s": SeatsScreen, "l": LicenceScreen,
               "u": UpdatesScreen, "g": LogsScreen, "F": FleetScreen}
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        for key, cls in [*screens.items(), ("d", DashboardScreen)]:
            await pilot.press(key)
            await settle(pilot)
            assert isinstance(app.screen, cls), key
        # each screen shows its data
        await pilot.press("m")
        await settle(pilot)
        assert app.screen.query_one(DataTable).row_count == 2
        await pilot.press("l")
        await settle(pilot)
        assert app.screen.query_one("#evaluation-banner").display
        assert "eval-7f3a" in text_of(app.screen.query_one("#licence-details", Static))
        await pilot.press("u")
        await settle(pilot)
        assert "a: 0.1.0 (committed)" in str(app.screen.query_one("#slot-current", Label).render())
        # footer bindings switch from any screen; the dashboard shows the polled status
        await pilot.press("d")
        await settle(pilot)
        tile = app.screen.query_one("#tile-requests")
        assert "1234 total" in tile.value


async def test_fleet_screen_lists_nodes_replicas_and_load(app: AdminApp, fake: FakeBox
                                                          ) -> None:
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("F")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, FleetScreen)
        assert "3 node(s), 2 alive, 1 dead" in str(screen.query_one("#fleet-note", Label).render())
        nodes = screen.query_one("#nodes", DataTable)
        rows = {nodes.get_row_at(i)[0]: nodes.get_row_at(i) for i in range(nodes.row_count)}
        assert list(rows) == ["head", "box-a", "box-b"]  # the head first
        assert rows["box-a"][2] == "alive" and rows["box-a"][7:] == ["1", "3"]
        assert rows["box-b"][2] == "DEAD"
        replicas = screen.query_one("#replicas", DataTable)
        assert replicas.get_row_at(0) == ["smollm2-135m-instruct", "k3v9x2", "box-a", "3"]
        models = screen.query_one("#fleet-models", DataTable)
        assert models.get_row_at(0)[1:] == ["RUNNING", "1", "running 1, starting 1"]


async def test_fleet_screen_says_plainly_when_not_a_fleet_head(app: AdminApp, fake: FakeBox
                                                               ) -> None:
    fake.fleet_head = False
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("F")
        await settle(pilot)
        assert str(app.screen.query_one("#fleet-note", Label).render()) == NOT_A_HEAD
        assert not app.screen.query_one("#nodes", DataTable).display


async def test_dashboard_refreshes_and_draws_a_trend(fake: FakeBox) -> None:
    app = AdminApp(fake, refresh_s=0.1)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        fake.requests_total = 1300
        tile = app.screen.query_one("#tile-requests")
        await wait_until(pilot, lambda: "1300 total" in tile.value)
        await wait_until(pilot, lambda: len(tile._samples) >= 3)


async def test_create_seat_and_key_shows_the_key_once(app: AdminApp, fake: FakeBox) -> None:
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("s")
        await settle(pilot)
        await pilot.press("n")
        await settle(pilot)
        assert isinstance(app.screen, NewSeatScreen)
        await pilot.press(*"bob", "enter", *"bob@acme.test", "enter")
        await settle(pilot)
        seats = app.screen.query_one("#seats", DataTable)
        assert isinstance(app.screen, SeatsScreen)
        assert seats.row_count == 3
        # the new seat is highlighted: its key goes to bob
        await settle(pilot)
        await pilot.press("k")
        await settle(pilot)
        assert isinstance(app.screen, KeyShownScreen)
        secret = app.screen.query_one("#secret", Input).value
        assert secret == "sk-box-000003.SECRET-of-seat-3"  # bob is seat 3
        assert "bob" in str(app.screen.query_one(".dialog-title", Label).render())
        await pilot.press("escape")
        await settle(pilot)
        assert isinstance(app.screen, SeatsScreen)
        keys = app.screen.query_one("#keys", DataTable)
        assert keys.row_count == 1
        shown = " ".join(str(c) for c in keys.get_row_at(0))
        assert "…" in shown and secret not in shown  # only the prefix stays visible
        # revoke it (with confirmation)
        await pilot.press("r")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await settle(pilot)
        assert "revoked" in [str(c) for c in keys.get_row_at(0)]
        assert "create_seat" in fake.calls and "revoke_key" in fake.calls


async def test_seat_limit_refusal_is_a_notification(app: AdminApp) -> None:
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("s")
        for name in ("carol", "dave"):
            await pilot.press("n")
            await settle(pilot)
            await pilot.press(*name, "enter", "enter")
            await settle(pilot)
        assert isinstance(app.screen, SeatsScreen)
        assert app.screen.query_one("#seats", DataTable).row_count == 3
        assert ("the licence allows 3 seat(s) and 3 are in use; delete a seat or import a "
                "licence with more seats") in messages(app)


async def test_box_error_message_is_notified_not_a_traceback(app: AdminApp,
                                                             fake: FakeBox) -> None:
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        fake.fail["load_model"] = BoxError(409, "not enough memory: budget 4096 MiB",
                                           "memory_budget")
        await pilot.press("m")
        await settle(pilot)
        await pilot.press("o")
        await settle(pilot)
        assert "not enough memory: budget 4096 MiB" in messages(app)
        assert isinstance(app.screen, ModelsScreen)  # the app is still running
        assert app.return_code is None


async def test_connection_lost_banner_appears_and_goes(fake: FakeBox) -> None:
    app = AdminApp(fake, refresh_s=0.1)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        banner = app.screen.query_one(ConnectionBanner)
        assert not banner.display
        fake.down = True
        await wait_until(pilot, lambda: banner.display)
        assert "connection refused" in text_of(banner)
        fake.down = False
        await wait_until(pilot, lambda: not banner.display)
        assert "Connection to the box restored." in messages(app)


async def test_unreachable_during_an_action_shows_banner_on_every_screen(
        app: AdminApp, fake: FakeBox) -> None:
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        fake.down = True
        await pilot.press("m")
        await settle(pilot)
        assert app.screen.query_one(ConnectionBanner).display
        await pilot.press("g")
        await settle(pilot)
        assert app.screen.query_one(ConnectionBanner).display
        fake.down = False
        app.poll()
        await settle(pilot)
        assert not app.screen.query_one(ConnectionBanner).display
        # the logs screen reloaded on reconnection
        assert app.screen.query_one("#audit", DataTable).row_count == 3


async def test_models_verify_remove_with_confirmation(app: AdminApp, fake: FakeBox) -> None:
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("m", "down")
        await settle(pilot)
        await pilot.press("v")
        await settle(pilot)
        assert "ppocr-v4: every file intact." in messages(app)
        await pilot.press("x")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")  # cancelled: nothing removed
        await settle(pilot)
        assert "remove_model" not in fake.calls
        await pilot.press("x")
        await settle(pilot)
        await pilot.press("y")
        await settle(pilot)
        assert app.screen.query_one(DataTable).row_count == 1
        assert "Removed ppocr-v4." in messages(app)


async def test_import_model_pack_uploads_the_file(app: AdminApp, fake: FakeBox,
                                                  tmp_path: Path) -> None:
    pack = tmp_path / "pack.bundle"
    pack.write_bytes(b"SIGNED-pack")
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("m", "i")
        await settle(pilot)
        assert isinstance(app.screen, PathPrompt)
        await enter_path(pilot, pack)
        await settle(pilot)
        assert "apply_update" in fake.calls
        assert "Import success" in messages(app)
        assert not app.screen.query_one("#upload").display  # progress hidden when done


async def test_update_inspect_review_apply(app: AdminApp, fake: FakeBox,
                                          tmp_path: Path) -> None:
    bundle = tmp_path / "release.bundle"
    bundle.write_bytes(b"SIGNED release")
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("u", "a")
        await settle(pilot)
        await enter_path(pilot, bundle)
        await settle(pilot)
        assert isinstance(app.screen, BundleReviewScreen)
        assert "apply_update" not in fake.calls  # inspected only
        await pilot.click("#apply")
        await settle(pilot)
        assert isinstance(app.screen, UpdatesScreen)
        assert "Update success: version 0.2.0" in messages(app)
        assert app.screen.query_one("#history", DataTable).row_count == 2


async def test_unsigned_bundle_is_refused_with_the_box_message(
        app: AdminApp, fake: FakeBox, tmp_path: Path) -> None:
    bundle = tmp_path / "evil.bundle"
    bundle.write_bytes(b"tampered")
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("u", "a")
        await settle(pilot)
        await enter_path(pilot, bundle)
        await settle(pilot)
        assert isinstance(app.screen, UpdatesScreen)  # no review of an unverified bundle
        assert "bundle signature does not verify with any trusted key" in messages(app)
        assert "apply_update" not in fake.calls


async def test_bundle_the_box_would_refuse_cannot_be_applied(
        app: AdminApp, fake: FakeBox, tmp_path: Path) -> None:
    bundle = tmp_path / "old.bundle"
    bundle.write_bytes(b"SIGNED-OLD release")
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("u", "a")
        await settle(pilot)
        await enter_path(pilot, bundle)
        await settle(pilot)
        assert isinstance(app.screen, BundleReviewScreen)
        assert app.screen.query_one("#apply").disabled
        assert "below the floor 0.1.0" in str(app.screen.query_one("#problem", Label).render())
        await pilot.press("escape")
        await settle(pilot)
        assert "apply_update" not in fake.calls


async def test_licence_request_and_import(app: AdminApp, tmp_path: Path) -> None:
    request = tmp_path / "req.json"
    response = tmp_path / "activation.json"
    response.write_text('{"licence": "signed"}')
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("l", "w")
        await settle(pilot)
        await enter_path(pilot, request)
        await settle(pilot)
        assert '"fingerprint": "fp-1234"' in request.read_text()
        await pilot.press("i")
        await settle(pilot)
        await enter_path(pilot, response)
        await settle(pilot)
        assert isinstance(app.screen, LicenceScreen)
        assert not app.screen.query_one("#evaluation-banner").display
        assert "L-2026-0042" in text_of(app.screen.query_one("#licence-details", Static))


async def test_export_usage_csv(app: AdminApp, tmp_path: Path) -> None:
    out = tmp_path / "usage.csv"
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("s", "e")
        await settle(pilot)
        await enter_path(pilot, out)
        await settle(pilot)
        assert out.read_text().splitlines()[1].startswith("1,admin,day,4")
        assert f"Wrote 2 usage rows to {out}." in messages(app)


async def test_logs_filter(app: AdminApp, fake: FakeBox) -> None:
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("g")
        await settle(pilot)
        audit = app.screen.query_one("#audit", DataTable)
        errors = app.screen.query_one("#errors", DataTable)
        assert audit.row_count == 3 and errors.row_count == 2
        await pilot.press("slash", *"seat")
        await settle(pilot)
        assert audit.row_count == 2 and errors.row_count == 0
        # typing in the filter does not switch screens; escape leaves it
        assert isinstance(app.screen, LogsScreen)
        await pilot.press("escape", "d")
        await settle(pilot)
        assert isinstance(app.screen, DashboardScreen)


async def test_status_refusal_is_said_once(fake: FakeBox) -> None:
    def refuse() -> Any:
        fake.calls.append("status")
        raise BoxError(401, "invalid API key")

    fake.status = refuse  # type: ignore[method-assign]
    app = AdminApp(fake, refresh_s=0.05)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: fake.calls.count("status") >= 4)
        await settle(pilot)
        assert messages(app).count("invalid API key") == 1


async def test_rotate_key_shows_the_new_key_and_revokes_the_old(app: AdminApp,
                                                                 fake: FakeBox) -> None:
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("s", "down")  # alice, key d4e5f6
        await settle(pilot)
        await pilot.press("t")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await settle(pilot)
        assert isinstance(app.screen, KeyShownScreen)
        assert app.screen.query_one("#secret", Input).value == "sk-box-000003.SECRET-of-seat-2"
        await pilot.press("escape")
        await settle(pilot)
        keys = app.screen.query_one("#keys", DataTable)
        states = {str(keys.get_row_at(i)[0]): str(keys.get_row_at(i)[3])
                  for i in range(keys.row_count)}
        assert states == {"d4e5f6": "revoked", "000003": "active"}


async def test_rollback_asks_first(app: AdminApp, fake: FakeBox) -> None:
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("u", "b")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmScreen) and "rollback" not in fake.calls
        await pilot.press("y")
        await settle(pilot)
        assert "Update success: version 0.1.0" in messages(app)


async def test_broken_audit_chain_is_shown(app: AdminApp, fake: FakeBox) -> None:
    fake.chain_ok = False
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("g")
        await settle(pilot)
        title = app.screen.query_one("#audit-title", Label)
        assert "CHAIN BROKEN" in str(title.render()) and title.has_class("bad")


async def test_accepting_the_clock_asks_first(app: AdminApp, fake: FakeBox) -> None:
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("l", "c")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmScreen) and "ack_clock" not in fake.calls
        await pilot.press("y")
        await settle(pilot)
        assert "ack_clock" in fake.calls and "Clock accepted." in messages(app)


async def test_an_answer_missing_fields_is_a_notification(app: AdminApp, fake: FakeBox) -> None:
    fake.models = lambda: [{"state": "loaded"}]  # type: ignore[method-assign]  # no "name"
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("m")
        await settle(pilot)
        assert "KeyError: 'name'" in messages(app)
        assert isinstance(app.screen, ModelsScreen) and app.return_code is None


async def test_dashboard_shows_engine_fallbacks_and_restarts(fake: FakeBox) -> None:
    fake._models[0].update(fallback="running in configuration 'safe' because the self-test "
                                    "crashed", worker_config="safe", worker_restarts=2,
                           worker_last_exit="was killed by SIGSEGV")
    app = AdminApp(fake, refresh_s=0.1)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        note = app.screen.query_one("#dash-engines", Label)
        await wait_until(pilot, lambda: "safe configuration" in text_of(note))
        assert note.display
        assert "restarted 2 time(s), last was killed by SIGSEGV" in text_of(note)

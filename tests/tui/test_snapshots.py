"""Snapshots of every screen on fixed data from the in-memory fake (deterministic layouts).

Update after an intended change with: .venv/bin/pytest tests/tui/test_snapshots.py --snapshot-update
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Input

from tests.tui.fake import FakeBox
from tests.tui.support import settle
from tui.app import AdminApp

SIZE = (120, 34)


def goto(key: str, *more: str) -> Callable[[Pilot[Any]], Awaitable[None]]:
    """A ``run_before`` that presses ``key`` then ``more``, letting workers finish each time."""

    async def run(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        for k in (key, *more):
            await pilot.press(k)
            await settle(pilot)

    return run


@pytest.mark.parametrize("key", ["d", "m", "s", "l", "u", "g", "F"],
                         ids=["dashboard", "models", "seats", "licence", "updates", "logs",
                              "fleet"])
def test_screen(snap_compare: Any, key: str) -> None:
    assert snap_compare(AdminApp(FakeBox(), refresh_s=3600), terminal_size=SIZE,
                        run_before=goto(key))


def test_new_key_modal(snap_compare: Any) -> None:
    """The secret shown once, with the copy hint."""
    assert snap_compare(AdminApp(FakeBox(), refresh_s=3600), terminal_size=SIZE,
                        run_before=goto("s", "down", "k"))


def test_bundle_review(snap_compare: Any, tmp_path: Path) -> None:
    """Inspect result of a signed bundle: signature, changes, manifest, confirm buttons."""
    bundle = tmp_path / "release-0.2.0.bundle"
    bundle.write_bytes(b"SIGNED" + b"x" * 100)

    async def run(pilot: Pilot[Any]) -> None:
        await goto("u", "a")(pilot)
        pilot.app.screen.query_one(Input).value = str(bundle)
        await pilot.press("enter")
        await settle(pilot)

    assert snap_compare(AdminApp(FakeBox(), refresh_s=3600), terminal_size=SIZE,
                        run_before=run)


def test_connection_lost_banner(snap_compare: Any) -> None:
    fake = FakeBox()
    fake.down = True
    assert snap_compare(AdminApp(fake, refresh_s=3600), terminal_size=SIZE,
                        run_before=goto("d"))

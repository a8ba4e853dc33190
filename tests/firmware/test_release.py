"""Releases: install into the inactive slot, switch, health check, commit or roll back."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx
import pytest

from firmware import boot
from firmware.errors import DowngradeError, SlotError

from .conftest import Box


def _ready(box: Box, within: float = 60.0) -> dict:
    """/readyz of the service the box runs now, waiting for it to start (busy machines)."""
    deadline = time.monotonic() + within
    while True:
        try:
            return httpx.get(f"http://127.0.0.1:{box.port}/readyz", timeout=10).json()
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_apply_switch_commit_then_failed_release_rolls_back(box: Box, wheels: dict) -> None:
    events: list[tuple[str, int, int]] = []
    up = box.updater(progress=lambda *e: events.append(e))
    r1 = up.apply(box.bundle("r1.apub", "release", "0.1.0", [wheels["0.1.0"]]))
    assert (r1.outcome, r1.slot) == ("success", "a")
    size = wheels["0.1.0"].stat().st_size
    assert ("verify", size, size) in events and ("extract", size, size) in events
    assert [e[0] for e in events if e[0].startswith("step:")] == [
        f"step:{s}" for s in ("verify", "lock", "record", "stage", "venv", "arm", "switch",
                              "restart", "health", "commit", "finish")]
    r2 = up.apply(box.bundle("r2.apub", "release", "0.2.0", [wheels["0.2.0"]]))
    assert (r2.outcome, r2.slot) == ("success", "b")
    assert _ready(box)["version"] == "0.2.0"
    assert box.updater().box_state().installed["release"] == "0.2.0"

    bad = box.bundle("r3.apub", "release", "0.3.0", [wheels["0.3.0-unready"]])
    r3 = up.apply(bad)
    assert r3.outcome == "rolled-back"
    assert "health check failed on slot a" in r3.reason and "rolled back to slot b" in r3.reason
    st = up.status()
    assert st.current == "b" and st.next_boot == "b"
    assert {s.name: s.state for s in st.slots} == {"a": "bad", "b": "committed"}
    assert _ready(box)["version"] == "0.2.0"  # the old release serves again
    hist = up.history()
    assert [(h.bundle_version, h.outcome) for h in hist] == [
        ("0.3.0", "rolled-back"), ("0.2.0", "success"), ("0.1.0", "success")]
    assert "503" in hist[0].reason
    actions = [a for a, _ in box.audit]
    assert actions.count("update.started") == 3 and "update.rolled_back" in actions

    # anti-rollback: 0.1.0 is older than the installed 0.2.0
    with pytest.raises(DowngradeError):
        up.apply(box.bundle("r1b.apub", "release", "0.1.0", [wheels["0.1.0"]]))


def test_crashing_release_rolls_back_fast_and_manual_rollback(box: Box, wheels: dict) -> None:
    up = box.updater()
    up.apply(box.bundle("r1.apub", "release", "0.1.0", [wheels["0.1.0"]]))
    with pytest.raises(SlotError):
        up.rollback()  # nothing committed in the other slot yet
    up.apply(box.bundle("r2.apub", "release", "0.2.0", [wheels["0.2.0"]]))
    r3 = up.apply(box.bundle("r3.apub", "release", "0.3.0", [wheels["0.3.0-crash"]]))
    assert r3.outcome == "rolled-back" and "exited" in r3.reason
    assert up.status().current == "b"

    # a manual rollback to 0.1.0 is impossible now (slot a holds the bad 0.3.0) ...
    with pytest.raises(SlotError):
        up.rollback()
    # ... but after a good 0.3.0 lands in slot a, rollback returns to 0.2.0 in slot b
    ok3 = box.bundle("r3ok.apub", "release", "0.3.0", [wheels["0.2.0"]])
    assert up.apply(ok3).outcome == "success"
    rb = up.rollback()
    assert (rb.outcome, rb.version, rb.slot) == ("rollback", "0.2.0", "b")
    st = up.status()
    assert st.installed["release"] == "0.2.0" and st.floors["release"] == "0.3.0"
    # the floor keeps 0.2.x-era bundles out; re-applying 0.3.0 is allowed again
    assert up.apply(ok3).outcome == "success"


def test_boot_counter_falls_back_after_n_failed_starts(box: Box, wheels: dict) -> None:
    up = box.updater()
    up.apply(box.bundle("r1.apub", "release", "0.1.0", [wheels["0.1.0"]]))
    box.kill_service()
    # stage a trial by hand as an apply would, holding the lock as a running apply does
    bundle_path = box.bundle("r2.apub", "release", "0.2.0", [wheels["0.3.0-crash"]])
    from firmware.reader import open_verified

    vb = open_verified(bundle_path, box.trusted, up.clock(), up.box_state())
    up.slots.install_release(vb, "b")
    up.slots.arm("b", "a")
    up.slots.switch("b")
    with up._lock():
        starts = []
        for _ in range(4):
            proc = subprocess.run([sys.executable, "-m", "firmware.boot", "--root",
                                   str(box.root), "--max-attempts", "3"],
                                  capture_output=True, text=True, check=True)
            starts.append(proc.stdout.strip())
    assert starts == ["b", "b", "b", "a"]
    assert boot.current_slot(box.root) == "a"
    assert json.loads((box.root / "b" / "slot.json").read_text())["state"] == "bad"
    assert up.slots.boot_state()["state"] == "fell-back"


def test_boot_script_runs_standalone_and_refuses_empty_root(box: Box, wheels: dict) -> None:
    up = box.updater()
    up.apply(box.bundle("r1.apub", "release", "0.1.0", [wheels["0.1.0"]]))
    script = box.root / "boot.py"
    assert script.is_file()
    proc = subprocess.run([sys.executable, "-I", str(script), "--root", str(box.root)],
                          capture_output=True, text=True)
    assert (proc.returncode, proc.stdout.strip()) == (0, "a")
    empty = box.base / "empty"
    empty.mkdir()
    proc = subprocess.run([sys.executable, "-I", str(script), "--root", str(empty)],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "no startable slot" in proc.stderr


def test_release_without_a_usable_service_manager_changes_nothing(box: Box,
                                                                  wheels: dict) -> None:
    from firmware.errors import ServiceError
    from firmware.service import SystemdServiceManager

    from .conftest import tree_hash

    bundle = box.bundle("r1.apub", "release", "0.1.0", [wheels["0.1.0"]])
    before = tree_hash(box.data_dir)
    no_systemctl = SystemdServiceManager(systemctl=str(box.base / "no-such-systemctl"))
    for service in (no_systemctl, None):
        up = box.updater()
        up.service = service
        with pytest.raises(ServiceError):
            up.apply(bundle)
    assert tree_hash(box.data_dir) == before

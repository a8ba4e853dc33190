"""Clock tamper and restored-state detection, with injected wall and monotonic clocks."""

from __future__ import annotations

import shutil
from pathlib import Path

from licensing.clock import ClockGuard, ClockState, advance
from tests.licensing.support import DAY, NOW, Clock, open_box_db

HOUR = 3600


def make(tmp_path: Path, clock: Clock, mono: Clock, tolerance: int = 24 * HOUR) -> ClockGuard:
    db = open_box_db(tmp_path / "appliance.db")
    return ClockGuard(db, tmp_path / "clock.state", tolerance, clock, mono)


def test_first_tick_sets_high_water(tmp_path, clock, mono) -> None:
    g = make(tmp_path, clock, mono)
    state = g.tick()
    assert state == ClockState(high_water=NOW, counter=1, locked="")
    assert (tmp_path / "clock.state").stat().st_mode & 0o777 == 0o600


def test_clock_set_back_two_days_locks(tmp_path, clock, mono) -> None:
    g = make(tmp_path, clock, mono)
    g.tick()
    clock.now -= 2 * DAY
    state = g.tick()
    assert "clock went back 48.0 h" in state.locked
    # Stays locked even when the clock is put right again, until acknowledged.
    clock.now += 2 * DAY
    assert g.tick().locked
    assert g.acknowledge().locked == ""
    assert g.tick().locked == ""


def test_forward_then_back_within_tolerance_is_fine(tmp_path, clock, mono) -> None:
    g = make(tmp_path, clock, mono)
    g.tick()
    clock.advance(20 * HOUR)  # e.g. a wrong NTP step forward ...
    assert g.tick().high_water == NOW + 20 * HOUR
    clock.advance(-20 * HOUR)  # ... corrected back: 20 h < 24 h tolerance
    state = g.tick()
    assert state.locked == "" and state.high_water == NOW + 20 * HOUR


def test_small_setbacks_add_up(tmp_path, clock, mono) -> None:
    g = make(tmp_path, clock, mono)
    g.tick()
    for _ in range(3):
        clock.advance(-10 * HOUR)
        g.tick()
    assert "went back 30.0 h" in g.state().locked


def test_frozen_wall_clock_detected_by_monotonic_time(tmp_path, clock, mono) -> None:
    g = make(tmp_path, clock, mono)
    g.tick()
    for _ in range(30):  # the box runs 30 h while the wall clock stands still
        mono.advance(HOUR)
        g.tick()
    assert "went back" in g.state().locked


def test_restart_keeps_high_water(tmp_path, clock, mono) -> None:
    make(tmp_path, clock, mono).tick()
    clock.now -= 3 * DAY
    restarted = make(tmp_path, clock, Clock(5.0))  # new process, new monotonic origin
    assert restarted.tick().locked


def test_restored_database_detected(tmp_path, clock, mono) -> None:
    g = make(tmp_path, clock, mono)
    g.tick()
    backup = tmp_path / "backup"
    backup.mkdir()
    g.db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    shutil.copy(tmp_path / "appliance.db", backup / "appliance.db")
    for _ in range(3):
        clock.advance(HOUR)
        g.tick()
    g.db.conn.close()
    shutil.copy(backup / "appliance.db", tmp_path / "appliance.db")
    restored = make(tmp_path, clock, mono)
    assert "restored state detected" in restored.tick().locked


def test_deleted_state_file_detected(tmp_path, clock, mono) -> None:
    g = make(tmp_path, clock, mono)
    g.tick()
    (tmp_path / "clock.state").unlink()
    assert "state file counter missing" in g.tick().locked


def test_timezone_is_irrelevant() -> None:
    # Only UTC epoch seconds reach the logic; a zone change does not move them.
    state = advance(None, NOW, 24 * HOUR).state
    assert advance(state, NOW + 60, 24 * HOUR, file_counter=1).state.locked == ""


def test_fresh_activation_clears_lock(tmp_path, clock, mono) -> None:
    g = make(tmp_path, clock, mono)
    g.tick()
    clock.now -= 5 * DAY
    assert g.tick().locked
    state = g.acknowledge("fresh activation")
    # unlocked, but trusted time did not move back with the wall clock
    assert state.locked == "" and state.high_water == NOW and state.skew == 5 * DAY
    assert g.tick().locked == ""


def test_two_processes_ticking_do_not_run_trusted_time_ahead(tmp_path, clock) -> None:
    server_mono, cli_mono = Clock(100.0), Clock(7.0)
    server = make(tmp_path, clock, server_mono)
    server.tick()
    for _ in range(50):
        clock.advance(30)
        server_mono.advance(30)
        cli_mono.advance(30)
        make(tmp_path, clock, cli_mono).tick()  # a short-lived CLI process
        clock.advance(30)
        server_mono.advance(30)
        server.tick()
    state = server.state()
    assert state.high_water == clock.now and state.locked == ""


def test_sub_second_ticks_still_advance_trusted_time(tmp_path, clock, mono) -> None:
    g = make(tmp_path, clock, mono, tolerance=10)
    g.tick()
    for _ in range(60):  # frozen wall clock, a tick every 0.25 s for 15 s
        mono.advance(0.25)
        g.tick()
    assert "went back" in g.state().locked

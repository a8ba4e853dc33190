"""SIGKILL a real ``appliance-update apply`` before every step; the box stays startable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from firmware.apply import PAUSE_ENV, RELEASE_STEPS
from licensing.crypto import b64

from .conftest import REPO, Box, tree_hash


def _stopped(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] == "T"


def _cli(box: Box, keys: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    cmd = [*box.cli(), "--keys", str(keys), *args]
    return subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _apply_args(box: Box, bundle: Path) -> list[str]:
    return ["apply", str(bundle), "--service", "process", "--command", " ".join(box.command),
            "--health-url", f"http://127.0.0.1:{box.port}", "--health-timeout", "4"]


def _kill_at(box: Box, keys: Path, bundle: Path, step: str) -> None:
    proc = _cli(box, keys, *_apply_args(box, bundle), env={PAUSE_ENV: step})
    deadline = time.monotonic() + 60
    while not _stopped(proc.pid):
        if proc.poll() is not None:
            pytest.fail(f"apply finished without reaching step {step}: {proc.communicate()}")
        assert time.monotonic() < deadline, f"apply never reached step {step}"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL


def _status(box: Box, keys: Path) -> dict:
    proc = _cli(box, keys, "--json", "status")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return json.loads(out)


def _would_boot(box: Box) -> str:
    proc = subprocess.run([sys.executable, "-m", "firmware.boot", "--root", str(box.root),
                           "--dry-run"], capture_output=True, text=True, check=True)
    return proc.stdout.strip()


def test_kill_at_every_step_leaves_a_startable_verified_slot(box: Box, wheels: dict,
                                                             tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "vendor.pub").write_text(b64(box.key.public))
    up = box.updater()
    up.apply(box.bundle("base.apub", "release", "0.1.0", [wheels["0.1.0"]]))
    box.kill_service()
    committed, version = "a", "0.1.0"
    cases = [(s, "0.2.0") for s in RELEASE_STEPS] + [("revert", "0.3.0-unready")]
    for n, (step, wheel) in enumerate(cases, start=1):
        new_version = f"0.{n + 1}.0"
        bundle = box.bundle(f"u{n}.apub", "release", new_version, [wheels[wheel]])
        before = tree_hash(box.data_dir)
        rows_before = len(up.history())
        _kill_at(box, keys, bundle, step)

        st = _status(box, keys)
        assert not st["apply_running"]
        slots = {s["name"]: s for s in st["slots"]}
        if step == "finish":  # killed after the slot was committed: the new slot stays
            committed, version = st["current"], new_version
        boot_slot = st["next_boot"]
        assert boot_slot == committed == _would_boot(box), (step, st)
        assert slots[boot_slot]["state"] == "committed"
        assert slots[boot_slot]["version"] == version
        assert (box.root / boot_slot / "venv" / "bin" / "appliance").exists()
        if step in ("verify", "lock"):
            assert tree_hash(box.data_dir) == before  # nothing written before the lock
            assert st["interrupted"] == []
        else:
            assert [e["bundle_version"] for e in st["interrupted"]] == [new_version], step
            assert len(up.history()) == rows_before + 1

        box.kill_service()  # the orphaned service of a killed apply, if any
        proc = _cli(box, keys, "recover")
        assert proc.wait(timeout=60) == 0, proc.communicate()
        st = _status(box, keys)
        assert st["interrupted"] == [] and st["current"] == committed
        assert st["boot"] in ({}, {**st["boot"], "state": "fell-back"})
        if step not in ("verify", "lock"):
            last = up.history()[0]
            expected = "success" if step == "finish" else "interrupted"
            assert (last.bundle_version, last.outcome) == (new_version, expected), step

    # after all of that, a normal update still goes through end to end
    final = box.bundle("final.apub", "release", "0.99.0", [wheels["0.2.0"]])
    proc = _cli(box, keys, *_apply_args(box, final))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "success" in out
    assert httpx.get(f"http://127.0.0.1:{box.port}/readyz").json()["version"] == "0.2.0"
    assert up.status().installed["release"] == "0.99.0"

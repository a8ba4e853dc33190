"""`appliance fleet init / join / leave` with real Ray nodes on loopback addresses."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="fleet tests need the fleet extra: pip install '.[fleet]'")

from fleet.node import free_ports
from fleet.token import new_token, write_token
from tests.conftest import ROOT

pytestmark = [pytest.mark.fleet, pytest.mark.timeout(600)]
HEAD, BOX = "127.0.0.2", "127.0.0.6"


def appliance(data: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "APPLIANCE_CONFIG": os.devnull}
    return subprocess.run([sys.executable, "-m", "appliance.cli", "--data-dir", str(data),
                           "fleet", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture
def head(tmp_path: Path):
    data = tmp_path / "head"
    port = free_ports(1, HEAD)[0]
    short = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))
    r = appliance(data, "init", "--address", HEAD, "--port", str(port), "--box", "h",
                  "--cpus", "0", "--temp-dir", str(short / "h"))
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        yield data, f"{HEAD}:{port}", short
    finally:
        appliance(data, "leave")
        shutil.rmtree(short, ignore_errors=True)


def test_init_writes_a_private_token_and_refuses_wildcard_and_loopback(tmp_path: Path,
                                                                        head) -> None:
    data, _, _ = head
    token = data / "fleet" / "join.token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    for address in ("0.0.0.0", "127.0.0.1"):
        r = appliance(tmp_path / "other", "init", "--address", address)
        assert r.returncode == 2 and "error" in r.stdout + r.stderr


def test_join_is_refused_without_the_token_and_with_a_wrong_one(tmp_path: Path, head) -> None:
    data, address, short = head
    box = tmp_path / "box"
    r = appliance(box, "join", address, "--address", BOX)
    assert r.returncode == 2 and "--token" in r.stdout + r.stderr
    readable = tmp_path / "readable.token"
    readable.write_text((data / "fleet" / "join.token").read_text())
    readable.chmod(0o644)
    r = appliance(box, "join", address, "--token", str(readable), "--address", BOX)
    assert r.returncode == 2 and "readable by others" in r.stdout + r.stderr
    wrong = write_token(tmp_path / "wrong.token", new_token())
    r = appliance(box, "join", address, "--token", str(wrong), "--address", BOX,
                  "--own-ports", "--temp-dir", str(short / "w"), "--cpus", "1")
    assert r.returncode == 2, r.stdout + r.stderr
    assert not (box / "fleet" / "node.json").exists()


def test_join_with_the_token_then_leave(tmp_path: Path, head) -> None:
    data, address, short = head
    box = tmp_path / "box"
    r = appliance(box, "join", address, "--token", str(data / "fleet" / "join.token"),
                  "--address", BOX, "--box", "b1", "--own-ports", "--temp-dir",
                  str(short / "b"), "--cpus", "1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert (box / "fleet" / "node.json").exists()
    r = appliance(box, "leave", "--timeout", "5")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "left the fleet" in r.stdout
    assert not (box / "fleet" / "node.json").exists()

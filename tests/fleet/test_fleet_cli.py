"""`appliance fleet init / join / leave` with real Ray nodes on loopback addresses."""

from __future__ import annotations

import shutil
import stat
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import ray  # noqa: F401  (no fleet extra: fail loudly; make test installs it)

from fleet.node import free_ports
from fleet.token import new_token, write_token
from licensing import crypto
from licensing.activation import Activation
from licensing.issuer import issue, parse_request
from tests.conftest import Box
from tests.fleet.support import appliance

pytestmark = [pytest.mark.fleet, pytest.mark.timeout(600)]
HEAD, BOX = "127.0.0.2", "127.0.0.6"


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


@pytest.fixture
def head_api(head, tmp_path: Path, vendor_key):
    """The head's API (``appliance serve`` in fleet mode), which admits boxes by licence."""
    data, address, _ = head
    ip, port = address.split(":")
    (tmp_path / "models").mkdir()
    box = Box(data, tmp_path / "models", env={
        "TEST_TRUSTED_KEYS_FILE": str(vendor_key.trusted_file),
        "APPLIANCE_FLEET_ENABLED": "1", "APPLIANCE_FLEET_ADDRESS": ip,
        "APPLIANCE_FLEET_PORT": port})
    yield box
    box.stop()


def box_request(data: Path) -> dict:
    """``appliance-license request`` on a joining box (its box key and salt)."""
    return Activation(data, {}).make_request()


def test_join_is_refused_without_the_token_and_with_a_wrong_one(tmp_path: Path, head,
                                                                head_api) -> None:
    data, address, short = head
    box = tmp_path / "box"
    r = appliance(box, "join", address, "--address", BOX)
    assert r.returncode == 2 and "--token" in r.stdout + r.stderr
    readable = tmp_path / "readable.token"
    readable.write_text((data / "fleet" / "join.token").read_text())
    readable.chmod(0o644)
    r = appliance(box, "join", address, "--token", str(readable), "--address", BOX)
    assert r.returncode == 2 and "readable by others" in r.stdout + r.stderr
    box_request(box)
    wrong = write_token(tmp_path / "wrong.token", new_token())
    r = appliance(box, "join", address, "--token", str(wrong), "--address", BOX,
                  "--own-ports", "--temp-dir", str(short / "w"), "--cpus", "1",
                  "--api", head_api.base_url)
    assert r.returncode == 2 and "wrong fleet token" in r.stdout + r.stderr
    assert not (box / "fleet" / "node.json").exists()


def test_a_box_joins_only_under_a_fleet_licence_that_names_it(tmp_path: Path, head,
                                                              head_api, vendor_key) -> None:
    data, address, short = head
    box = tmp_path / "box"
    join = ("join", address, "--token", str(data / "fleet" / "join.token"), "--address", BOX,
            "--box", "b1", "--own-ports", "--temp-dir", str(short / "b"), "--cpus", "1",
            "--api", head_api.base_url)
    b_request = box_request(box)
    r = appliance(box, *join)  # the head runs on its evaluation licence: one box only
    assert r.returncode == 2 and "evaluation licence covers one box" in r.stdout + r.stderr
    assert not (box / "fleet" / "node.json").exists()
    auth = {"Authorization": f"Bearer {head_api.api_key}"}
    head_request = httpx.post(head_api.base_url + "/admin/licence/request", headers=auth,
                              timeout=30).json()

    def import_fleet_licence(naming: dict) -> None:
        """Issue the head a fleet licence that lists the box of ``naming``; import it."""
        licence = issue(parse_request(crypto.canonical_json(head_request)), vendor_key.key,
                        customer="ACME", seats=5, days=30, models="*", features="*",
                        now=int(time.time()),
                        boxes=[parse_request(crypto.canonical_json(naming))])
        r = httpx.post(head_api.base_url + "/admin/licence/import", headers=auth,
                       content=licence, timeout=30)
        assert r.status_code == 200, r.text

    import_fleet_licence(Activation(tmp_path / "other", {}).make_request())
    r = appliance(box, *join)  # a fleet licence, but it names another box
    assert r.returncode == 2 and "does not list b1" in r.stdout + r.stderr
    import_fleet_licence(b_request)
    r = appliance(box, *join)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "the head admits b1" in r.stdout
    assert (box / "fleet" / "node.json").exists()
    r = appliance(box, "leave", "--timeout", "5")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "left the fleet" in r.stdout
    assert not (box / "fleet" / "node.json").exists()

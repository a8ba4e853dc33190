"""``appliance-license`` through real subprocesses: request -> issue -> import -> status.

Vendor-side commands run the installed console script as shipped. Box-side commands that
must trust the test's vendor key run ``licensing.cli.main`` in a fresh interpreter with
that key injected (the shipped CLI trusts only ``licensing/keys/*.pub``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(sys.executable).parent / "appliance-license"
BOX = (
    "import sys\n"
    "from licensing import crypto\n"
    "from licensing.cli import main\n"
    "pub = open(sys.argv[1]).read().strip()\n"
    "raw = crypto.unb64(pub)\n"
    "sys.exit(main(sys.argv[2:], trusted_keys={crypto.key_id(raw): raw}))\n"
)


def run(args: list[str], data_dir: Path, pub: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "APPLIANCE_DATA_DIR": str(data_dir)}
    if pub is None:
        cmd = (
            [str(SCRIPT), *args]
            if SCRIPT.exists()
            else [sys.executable, "-m", "licensing.cli", *args]
        )
    else:
        cmd = [sys.executable, "-c", BOX, str(pub), *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def vendor(tmp_path_factory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("vendor")
    proc = run(["keygen", "--out", str(out / "keys")], out)
    assert proc.returncode == 0, proc.stderr
    pem = next((out / "keys").glob("*.pem"))
    assert pem.stat().st_mode & 0o777 == 0o600
    return pem, pem.with_suffix(".pub")


def test_round_trip_request_issue_import_status(tmp_path, vendor) -> None:
    pem, pub = vendor
    data = tmp_path / "box"
    req = run(["request"], data)
    assert req.returncode == 0, req.stderr
    (tmp_path / "req.json").write_bytes(req.stdout)
    request = json.loads(req.stdout)
    assert set(request["fingerprint"]["components"]) >= {"machine_id", "cpu"}
    # only hashes leave the box: no string value is the host name (a short name such as
    # "vm" can occur inside a random base64 key, so compare whole values)
    def strings(v):
        if isinstance(v, dict):
            for x in v.values():
                yield from strings(x)
        elif isinstance(v, list):
            for x in v:
                yield from strings(x)
        elif isinstance(v, str):
            yield v

    assert os.uname().nodename not in set(strings(request))

    issued = run(
        ["issue", "--request", str(tmp_path / "req.json"), "--seats", "5", "--customer",
         "ACME Corp", "--days", "365", "--models", "smollm2-*,ppocr-*", "--features",
         "chat,ocr", "--key", str(pem), "--out", str(tmp_path / "activation.json")],
        tmp_path,
    )  # fmt: skip
    assert issued.returncode == 0, issued.stderr

    shown = run(["inspect", str(tmp_path / "activation.json")], tmp_path)
    assert shown.returncode == 0 and b'"customer": "ACME Corp"' in shown.stdout
    assert b"NOT VERIFIED" in shown.stdout  # the shipped CLI does not trust the test key

    imported = run(["import", str(tmp_path / "activation.json")], data, pub)
    assert imported.returncode == 0, imported.stderr
    assert b"imported licence lic-" in imported.stdout
    assert (data / "licence.json").stat().st_mode & 0o777 == 0o600

    status = run(["status", "--json"], data, pub)
    assert status.returncode == 0, status.stderr
    st = json.loads(status.stdout)
    assert st["label"] == "LICENSED" and st["seats_total"] == 5 and st["seats_used"] == 0
    assert st["licence"]["customer"] == "ACME Corp"
    assert st["licence"]["models"] == ["smollm2-*", "ppocr-*"]
    assert st["licence"]["days_left"] == 365 and st["licence"]["grace_days_left"] == 14
    assert (
        st["licence"]["fingerprint"]
        == f"all {len(request['fingerprint']['components'])} components match"
    )

    admin = run(["admin-key"], data, pub)
    assert admin.returncode == 0, admin.stderr
    assert (data / "admin.key").read_text().startswith("sk-box-")
    assert (data / "admin.key").stat().st_mode & 0o777 == 0o600
    human = run(["status"], data, pub)
    assert b"Seats:        1 used of 5" in human.stdout

    receipt = run(["deactivate", "--yes", "--out", str(tmp_path / "receipt.json")], data, pub)
    assert receipt.returncode == 0, receipt.stderr
    checked = run(["inspect", str(tmp_path / "receipt.json")], tmp_path)
    assert b"valid (box key)" in checked.stdout
    again = run(["import", str(tmp_path / "activation.json")], data, pub)
    assert again.returncode == 2 and b"was deactivated" in again.stderr
    gone = run(["status"], data, pub)
    assert gone.returncode == 3 and b"UNLICENSED" in gone.stdout


def test_shipped_cli_refuses_licence_from_unknown_key(tmp_path, vendor) -> None:
    pem, _ = vendor
    data = tmp_path / "box"
    (tmp_path / "req.json").write_bytes(run(["request"], data).stdout)
    args = ["issue", "--request", str(tmp_path / "req.json"), "--seats", "1", "--customer", "X"]
    run([*args, "--days", "1", "--key", str(pem), "--out", str(tmp_path / "a.json")], tmp_path)
    proc = run(["import", str(tmp_path / "a.json")], data)
    assert proc.returncode == 2 and b"unknown key id" in proc.stderr
    assert b"Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("truncated.json", b'{"licence": {"format": "appliance-lic', b"not valid JSON"),
        ("oversize.json", b"{" + b" " * 70_000 + b"}", b"larger than"),
        ("list.json", b"[1, 2]", b"must be a JSON object"),
        ("nested.json", b'{"a":' * 40 + b"1" + b"}" * 40, b"nested deeper"),
        ("binary.json", bytes(range(256)), b"not valid JSON"),
        ("empty.json", b"", b"is empty"),
    ],
    ids=lambda v: v if isinstance(v, str) and v.endswith(".json") else "",
)
def test_bad_files_give_clear_errors(tmp_path, name: str, content: bytes, message: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    for cmd in (["import", str(path)], ["inspect", str(path)]):
        proc = run(cmd, tmp_path / "box")
        assert proc.returncode == 2, (cmd, proc.stderr)
        assert proc.stderr.startswith(b"error: ") and message in proc.stderr
        assert b"Traceback" not in proc.stderr


def test_missing_file_and_directory(tmp_path) -> None:
    for target in (tmp_path / "nope.json", tmp_path):
        proc = run(["import", str(target)], tmp_path / "box")
        assert proc.returncode == 2 and b"not a regular file" in proc.stderr


def test_issue_with_bad_arguments(tmp_path, vendor) -> None:
    pem, _ = vendor
    (tmp_path / "req.json").write_bytes(run(["request"], tmp_path / "box").stdout)
    base = ["issue", "--request", str(tmp_path / "req.json"), "--customer", "X", "--key", str(pem)]
    proc = run([*base, "--seats", "0", "--days", "10"], tmp_path)
    assert proc.returncode == 2 and b"seats" in proc.stderr
    proc = run([*base, "--seats", "1", "--days", "10", "--features", "Bad Feature"], tmp_path)
    assert proc.returncode == 2 and b"invalid feature" in proc.stderr
    proc = run([*base[:-1], str(tmp_path / "req.json"), "--seats", "1", "--days", "1"], tmp_path)
    assert proc.returncode == 2 and b"not an Ed25519 private key" in proc.stderr


def test_ack_clock_command(tmp_path) -> None:
    proc = run(["ack-clock"], tmp_path / "box")
    assert proc.returncode == 0 and b"clock acknowledged" in proc.stdout


# (every command runs this checkout's code: the fleet options are newer than the script)
def test_fleet_round_trip_one_request_names_every_box(tmp_path, vendor) -> None:
    pem, pub = vendor
    head, other = tmp_path / "head", tmp_path / "b"
    req_b = run(["request", "--out", str(tmp_path / "b.json")], other, pub)
    assert req_b.returncode == 0, req_b.stderr
    fleet = run(["request", "--fleet", str(tmp_path / "b.json"), "--out",
                 str(tmp_path / "fleet.json")], head, pub)
    assert fleet.returncode == 0, fleet.stderr
    shown = run(["inspect", str(tmp_path / "fleet.json")], tmp_path, pub)
    assert b'"kind": "fleet activation request"' in shown.stdout
    assert b'"boxes": 2' in shown.stdout
    too_few = run(["issue", "--request", str(tmp_path / "fleet.json"), "--seats", "8",
                   "--customer", "ACME", "--days", "30", "--key", str(pem), "--boxes", "1"],
                  tmp_path, pub)
    assert too_few.returncode == 2 and b"boxes must be 2.." in too_few.stderr
    issued = run(["issue", "--request", str(tmp_path / "fleet.json"), "--seats", "8",
                  "--customer", "ACME", "--days", "30", "--key", str(pem), "--boxes", "3",
                  "--out", str(tmp_path / "fleet-activation.json")], tmp_path, pub)
    assert issued.returncode == 0, issued.stderr
    imported = run(["import", str(tmp_path / "fleet-activation.json")], head, pub)
    assert imported.returncode == 0, imported.stderr
    licence = json.loads(run(["inspect", str(tmp_path / "fleet-activation.json")],
                             tmp_path, pub).stdout)
    assert licence["max_boxes"] == 3 and licence["seats"] == 8
    b_key = json.loads((tmp_path / "b.json").read_bytes())["box_key"]
    assert [b["box_key"] for b in licence["boxes"]] == [b_key]

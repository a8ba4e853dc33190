"""The admin client without a box: error shapes, unreachable boxes, key files, uploads."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import httpx
import pytest

from tui import app as tui_app
from tui.client import (
    AdminClient,
    BoxUnreachable,
    KeyFileError,
    _error_message,
    _file_chunks,
    read_key_file,
    resolve_key,
)


def test_openai_error_shape_gives_the_box_message() -> None:
    body = {"error": {"message": "all 3 seats are in use", "type": "invalid_request_error",
                      "param": None, "code": "seat_limit"}}
    assert _error_message(httpx.Response(409, json=body)) == ("all 3 seats are in use",
                                                               "seat_limit")


def test_other_error_bodies_still_read_well() -> None:
    assert _error_message(httpx.Response(404, json={"detail": "Not Found"})) == (
        "Not Found", None)
    assert _error_message(httpx.Response(502, text="bad gateway\n")) == ("bad gateway", None)
    assert _error_message(httpx.Response(500))[0] == "Internal Server Error"


def test_closed_port_is_unreachable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = AdminClient(f"http://127.0.0.1:{port}", "k", timeout=2)
    with pytest.raises(BoxUnreachable, match=f"127.0.0.1:{port}"):
        client.status()
    client.close()


def test_upload_streams_in_chunks_with_progress(tmp_path: Path) -> None:
    data = os.urandom(200_000)
    path = tmp_path / "bundle"
    path.write_bytes(data)
    seen: list[tuple[int, int]] = []
    chunks = list(_file_chunks(path, len(data), lambda sent, total: seen.append((sent, total))))
    assert b"".join(chunks) == data
    assert len(chunks) == 4  # 64 KiB pieces, never the whole file at once
    assert seen[0] == (0, len(data)) and seen[-1] == (len(data), len(data))
    assert [s for s, _ in seen] == sorted(s for s, _ in seen)


def test_key_file_must_be_private(tmp_path: Path) -> None:
    key = tmp_path / "admin.key"
    key.write_text("sk-admin-secret\n")
    key.chmod(0o600)
    assert read_key_file(key) == "sk-admin-secret"
    for mode in (0o640, 0o604, 0o644):
        key.chmod(mode)
        with pytest.raises(KeyFileError, match=f"mode {mode:04o}.*chmod 600"):
            read_key_file(key)
    with pytest.raises(KeyFileError, match="does not exist"):
        read_key_file(tmp_path / "missing.key")


def test_key_precedence(tmp_path: Path) -> None:
    key = tmp_path / "admin.key"
    key.write_text("from-file")
    key.chmod(0o600)
    env = {"APPLIANCE_ADMIN_KEY": "from-env"}
    assert resolve_key("from-flag", key, env) == "from-flag"
    assert resolve_key(None, key, env) == "from-env"
    assert resolve_key(None, key, {}) == "from-file"


def test_main_refuses_a_readable_key_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("APPLIANCE_ADMIN_KEY", raising=False)
    key = tmp_path / "admin.key"
    key.write_text("sk-admin")
    key.chmod(0o644)
    assert tui_app.main(["--key-file", str(key)]) == 2
    err = capsys.readouterr().err
    assert "accessible by group/others (mode 0644)" in err
    assert f"chmod 600 {key}" in err
    assert "Traceback" not in err

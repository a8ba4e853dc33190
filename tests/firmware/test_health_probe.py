"""Issue 12 item 9: the update health check never hands out a key and knows who answers.

An impostor that binds the port while the service restarts receives no API key, learns
nothing it can reuse, and cannot make the check pass; only a process holding the one-time
token (the box the updater started) can answer, and with the pid the service manager knows.
"""

from __future__ import annotations

import http.server
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from firmware.errors import HealthCheckError
from firmware.health import PROBE_PATH, HealthCheck, probe_answer, read_token, write_token


class _Server:
    """A loopback HTTP server that records every request and answers like ``mode`` says."""

    def __init__(self, data_dir: Path, mode: str, pid: int = 4242) -> None:
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _send(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                outer.seen.append(("GET", self.path, dict(self.headers)))
                self._send(200, {"status": "ready"})

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length", 0))
                req = json.loads(self.rfile.read(n) or b"{}")
                outer.seen.append(("POST", self.path, dict(self.headers)))
                if mode == "impostor":  # says yes to everything, as a squatter would
                    self._send(200, {"pid": pid, "answer": "0" * 64, "choices": []})
                    return
                token = read_token(data_dir, time.time()) or ""
                self._send(200, {"pid": pid, "answer": probe_answer(token, req["nonce"], pid)})

            def log_message(self, *a: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    (d / "admin.key").write_text("sk-box-000000000000." + "A" * 43 + "\n")
    return d


@pytest.fixture
def server(request: pytest.FixtureRequest, data_dir: Path) -> Iterator[_Server]:
    s = _Server(data_dir, request.param)
    yield s
    s.close()


@pytest.mark.parametrize("server", ["impostor"], indirect=True)
def test_attack_9_impostor_on_the_port_gets_no_key_and_cannot_pass(server, data_dir) -> None:
    token = write_token(data_dir)
    check = HealthCheck(base_url=server.url, token=token, timeout=5, interval=0.05)
    with pytest.raises(HealthCheckError, match="does not hold the probe token"):
        check.run()
    admin_key = (data_dir / "admin.key").read_text().strip()
    for method, path, headers in server.seen:
        assert "authorization" not in {k.lower() for k in headers}, (method, path)
        assert admin_key not in json.dumps(headers)
        assert token not in json.dumps(headers) and token not in path
    assert [p for _, p, _ in server.seen] == ["/readyz", PROBE_PATH]


@pytest.mark.parametrize("server", ["honest"], indirect=True)
def test_probe_passes_for_the_token_holder_with_the_started_pid(server, data_dir) -> None:
    token = write_token(data_dir)
    HealthCheck(base_url=server.url, token=token, timeout=5, pid=lambda: 4242).run()
    with pytest.raises(HealthCheckError, match="pid 4242"):
        HealthCheck(base_url=server.url, token=token, timeout=5, pid=lambda: 7).run()


def test_probe_token_is_private_and_expires(data_dir) -> None:
    write_token(data_dir, now=1000.0, ttl=60)
    path = data_dir / "health.token"
    assert path.stat().st_mode & 0o777 == 0o600
    assert read_token(data_dir, 1059.0) is not None
    assert read_token(data_dir, 1060.0) is None


def test_cli_health_check_carries_no_admin_key(data_dir, tmp_path) -> None:
    from firmware.cli import _parser, _updater

    args = _parser().parse_args(["--data-dir", str(data_dir), "--root", str(tmp_path / "r"),
                                 "apply", "x.bundle", "--service", "process"])
    up = _updater(args)
    assert up.health.token_dir == data_dir and up.health.token is None
    assert (data_dir / "admin.key").read_text().strip() not in repr(up.health)
    assert not os.path.exists(data_dir / "health.token")  # written only while probing


@pytest.mark.parametrize("server", ["honest"], indirect=True)
def test_token_lives_only_during_the_probe(server, data_dir) -> None:
    HealthCheck(base_url=server.url, token_dir=data_dir, timeout=5).run()
    assert [p for _, p, _ in server.seen] == ["/readyz", PROBE_PATH]
    assert not (data_dir / "health.token").exists()

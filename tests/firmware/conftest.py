"""Fixtures for update bundles: a vendor key, tiny release wheels, a box with slots."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import sys
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from appliance.modelstore import ModelStorePacks
from firmware.apply import Updater
from firmware.build import build_bundle, collect_payloads
from firmware.health import HealthCheck
from firmware.service import ProcessServiceManager
from licensing.crypto import SigningKey

REPO = Path(__file__).resolve().parents[2]
NOW = datetime.now(UTC).replace(microsecond=0)
LATER = NOW + timedelta(days=30)

SERVER = '''\
import hashlib, hmac, http.server, json, os, sys
HEALTH = {health!r}
VERSION = {version!r}

def main():
    args = sys.argv[1:]
    port = int(args[args.index("--port") + 1]) if "--port" in args else 8000
    data_dir = args[args.index("--data-dir") + 1] if "--data-dir" in args else "."
    if HEALTH == "crash":
        sys.exit(3)

    class Handler(http.server.BaseHTTPRequestHandler):
        def _send(self, code, body):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/readyz":
                ok = HEALTH == "ok"
                self._send(200 if ok else 503, {{"ready": ok, "version": VERSION}})
            else:
                self._send(404, {{}})

        def do_POST(self):
            n = int(self.headers.get("Content-Length", 0))
            req = json.loads(self.rfile.read(n) or b"{{}}")
            if self.path == "/healthz/probe":  # the protocol of firmware.health
                try:
                    with open(os.path.join(data_dir, "health.token")) as fh:
                        token = json.load(fh)["token"].encode()
                except OSError:
                    return self._send(401, {{}})
                want = hmac.new(token, ("appliance-probe-request\\0" + req["nonce"]).encode(),
                                hashlib.sha256).hexdigest()
                if want != req["proof"]:
                    return self._send(401, {{}})
                msg = "appliance-probe-answer\\0%s\\0%d" % (req["nonce"], os.getpid())
                self._send(200, {{"pid": os.getpid(), "answer": hmac.new(
                    token, msg.encode(), hashlib.sha256).hexdigest()}})
            else:
                self._send(400, {{}})

        def log_message(self, *a):
            pass

    http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
'''


def make_wheel(dest: Path, version: str, health: str = "ok") -> Path:
    """A minimal pure wheel ``appliance-<version>`` whose ``appliance`` script serves HTTP."""
    files = {
        "tinyappliance/__init__.py": SERVER.format(health=health, version=version).encode(),
        f"appliance-{version}.dist-info/METADATA":
            f"Metadata-Version: 2.1\nName: appliance\nVersion: {version}\n".encode(),
        f"appliance-{version}.dist-info/WHEEL":
            b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"appliance-{version}.dist-info/entry_points.txt":
            b"[console_scripts]\nappliance = tinyappliance:main\n",
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record_name = f"appliance-{version}.dist-info/RECORD"
    record.append(f"{record_name},,")
    files[record_name] = ("\n".join(record) + "\n").encode()
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / f"appliance-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def tree_hash(*roots: Path) -> str:
    """Hash of every path, type, link target and file content under ``roots``."""
    h = hashlib.sha256()
    for root in roots:
        if not root.exists():
            h.update(f"{root}: absent\n".encode())
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(dirnames + filenames):
                p = Path(dirpath) / name
                h.update(str(p.relative_to(root)).encode())
                if p.is_symlink():
                    h.update(b"L" + os.readlink(p).encode())
                elif p.is_file():
                    h.update(b"F" + hashlib.sha256(p.read_bytes()).digest())
                else:
                    h.update(b"D")
    return h.hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def vendor_key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture(scope="session")
def trusted(vendor_key: SigningKey) -> dict[str, bytes]:
    return {vendor_key.key_id: vendor_key.public}


@pytest.fixture(scope="session")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("wheels")
    return {
        "0.1.0": make_wheel(d / "0.1.0", "0.1.0"),
        "0.2.0": make_wheel(d / "0.2.0", "0.2.0"),
        "0.3.0-unready": make_wheel(d / "0.3.0u", "0.3.0", "unready"),
        "0.3.0-crash": make_wheel(d / "0.3.0c", "0.3.0", "crash"),
    }


class Box:
    """A box under test: data dir, slot root, a process service on a free port."""

    def __init__(self, base: Path, trusted: dict[str, bytes], key: SigningKey) -> None:
        self.base, self.trusted, self.key = base, trusted, key
        self.data_dir = base / "data"
        self.root = self.data_dir / "slots"
        self.port = free_port()
        self.command = ["{venv}/bin/appliance", "serve", "--foreground", "--port",
                        str(self.port), "--data-dir", str(self.data_dir)]
        self.service = ProcessServiceManager(self.root, self.command)
        # 20 s: a new release's interpreter may start slowly on a busy 2-core machine;
        # the "unready" release answers 503 throughout, so it still fails, after 20 s.
        self.health = HealthCheck(base_url=f"http://127.0.0.1:{self.port}", timeout=20,
                                  interval=0.05)
        self.audit: list[tuple[str, dict]] = []
        self.bundles = base / "bundles"
        self.bundles.mkdir(parents=True, exist_ok=True)

    def updater(self, **kw) -> Updater:
        kw.setdefault("trusted", self.trusted)
        kw.setdefault("service", self.service)
        kw.setdefault("health", self.health)
        kw.setdefault("audit", lambda action, details: self.audit.append((action, details)))
        kw.setdefault("step_hook", lambda step: None)
        kw.setdefault("packs", ModelStorePacks(self.data_dir / "models"))
        return Updater(self.data_dir, self.root, **kw)

    def bundle(self, name: str, bundle_type: str, version: str, paths: list[Path],
               **kw) -> Path:
        out = self.bundles / name
        kw.setdefault("expires", LATER)
        build_bundle(out, bundle_type=bundle_type, version=version, key=kw.pop("key", self.key),
                     files=collect_payloads(bundle_type, paths), **kw)
        return out

    def kill_service(self) -> None:
        """Stop whatever service process the pid file names (also after a SIGKILLed apply)."""
        self.service.stop()

    def cli(self) -> list[str]:
        return [sys.executable, "-m", "firmware.cli", "--data-dir", str(self.data_dir),
                "--root", str(self.root)]


@pytest.fixture
def box(tmp_path: Path, trusted: dict[str, bytes], vendor_key: SigningKey) -> Iterator[Box]:
    b = Box(tmp_path, trusted, vendor_key)
    yield b
    b.kill_service()

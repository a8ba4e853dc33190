"""Security defaults of a real `appliance serve` process.

One server started through the real console script, with no host configured, a TLS
certificate generated here, a small body cap and debug logging, under umask 022:
- it listens on 127.0.0.1 only, and speaks HTTPS (plain HTTP is refused);
- CORS is off: no Access-Control-Allow-Origin on a cross-origin request or preflight;
- bodies over the cap get 413 in the OpenAI error shape, declared or chunked;
- API keys (the admin key and keys issued through the API) never reach the log;
- the data directory is 0700 and every file in it has no group/other permission.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import psutil
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from appliance.settings import Settings
from tests.conftest import LLM, free_port
from tests.hardening.conftest import is_error_shape, linked_models

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
MAX_BODY = 64 << 10


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "appliance.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


@pytest.fixture(scope="module")
def tls_box(model_store, tmp_path_factory) -> Iterator[SimpleNamespace]:
    tmp = tmp_path_factory.mktemp("tls")
    cert, key = self_signed(tmp)
    data = tmp / "data"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    env.update({"APPLIANCE_CONFIG": os.devnull, "APPLIANCE_TLS_CERT": str(cert),
                "APPLIANCE_TLS_KEY": str(key), "APPLIANCE_MAX_BODY_BYTES": str(MAX_BODY),
                "APPLIANCE_LOG_LEVEL": "debug", "APPLIANCE_LLM_CTX": "2048",
                "APPLIANCE_LLM_THREADS": "2",
                "APPLIANCE_MODELS_DIR": str(linked_models(model_store.root, tmp / "models"))})
    log_path = tmp / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(BIN / "appliance"), "--data-dir", str(data), "serve", "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp,
            preexec_fn=lambda: os.umask(0o022))
    url = f"https://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        assert proc.poll() is None, log_path.read_text()[-3000:]
        try:
            if httpx.get(url + "/healthz", verify=str(cert), timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.time() < deadline, log_path.read_text()[-3000:]
        time.sleep(0.2)
    box = SimpleNamespace(url=url, port=port, cert=str(cert), proc=proc, data=data,
                          log=log_path, key=(data / "admin.key").read_text().strip())
    yield box
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def _client(box) -> httpx.Client:
    return httpx.Client(base_url=box.url, verify=box.cert, timeout=60,
                        headers={"Authorization": f"Bearer {box.key}"})


def test_default_host_is_loopback() -> None:
    assert Settings().host == "127.0.0.1"
    assert Settings().cors_origins == []


def test_binds_loopback_only_and_serves_tls(tls_box) -> None:
    listening = [c.laddr for c in psutil.Process(tls_box.proc.pid).net_connections("inet")
                 if c.status == psutil.CONN_LISTEN]
    assert listening and all(a.ip == "127.0.0.1" for a in listening), listening
    with _client(tls_box) as c:
        r = c.get("/v1/models")
        assert r.status_code == 200 and r.json()["data"]
    assert r.extensions["http_version"] in (b"HTTP/1.1", b"HTTP/2")
    with pytest.raises(httpx.HTTPError):  # plain HTTP on the TLS port gets no answer
        r = httpx.get(f"http://127.0.0.1:{tls_box.port}/healthz", timeout=5)
        assert r.status_code >= 400
        raise httpx.HTTPError("plain HTTP answered with an error")
    with pytest.raises(httpx.ConnectError):  # and the certificate is really checked
        httpx.get(tls_box.url + "/healthz", timeout=5)


def test_cors_is_off_by_default(tls_box) -> None:
    origin = {"Origin": "https://evil.example"}
    with _client(tls_box) as c:
        r = c.get("/v1/models", headers=origin)
        assert r.status_code == 200
        assert not any(h.lower().startswith("access-control-") for h in r.headers)
        pre = c.options("/v1/chat/completions", headers={
            **origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type"})
        assert "access-control-allow-origin" not in pre.headers, pre.headers
        assert pre.status_code >= 400


def test_request_body_cap_is_413_in_error_shape(tls_box) -> None:
    big = {"model": LLM, "messages": [{"role": "user", "content": "x" * (MAX_BODY + 10)}]}
    with _client(tls_box) as c:
        r = c.post("/v1/chat/completions", json=big)
        assert r.status_code == 413 and is_error_shape(r.json()), r.text
        assert r.json()["error"]["code"] == "body_too_large"

        def chunks() -> Iterator[bytes]:  # no Content-Length: the cap applies while reading
            yield b'{"model": "' + LLM.encode() + b'", "messages": [{"role": "user", "content": "'
            for _ in range(MAX_BODY // 4096 + 4):
                yield b"y" * 4096
            yield b'"}]}'

        r = c.post("/v1/chat/completions", content=chunks(),
                   headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and is_error_shape(r.json()), r.text
        assert r.json()["error"]["code"] == "body_too_large"
        r = c.post("/admin/licence/import", content=chunks())  # a raw-body route
        assert r.status_code == 413 and is_error_shape(r.json()), r.text
        ok = c.post("/v1/chat/completions", json={
            "model": LLM, "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]})
        assert ok.status_code == 200, ok.text


def test_keys_never_logged(tls_box) -> None:
    with _client(tls_box) as c:
        seat = c.post("/admin/seats", json={"name": "logcheck", "role": "user"}).json()
        issued = c.post(f"/admin/seats/{seat['id']}/keys").json()["key"]
        rotated = c.post(f"/admin/keys/{issued.split('-')[2].split('.')[0]}/rotate").json()
        user = httpx.get(tls_box.url + "/v1/models", verify=tls_box.cert,
                         headers={"Authorization": f"Bearer {rotated['key']}"})
        assert user.status_code == 200
        bad = httpx.get(tls_box.url + "/v1/models", verify=tls_box.cert,
                        headers={"Authorization": f"Bearer {issued}"})
        assert bad.status_code == 401  # the rotated-away key, refused and maybe logged
        c.delete(f"/admin/seats/{seat['id']}")
    time.sleep(0.3)
    log = tls_box.log.read_bytes()
    assert b"admin.key" in log  # the log says where the admin key is, never what it is
    for secret in (tls_box.key, issued, rotated["key"]):
        assert secret.split(".")[1].encode() not in log, "an API key secret is in the log"


def test_data_dir_and_key_files_are_private(tls_box) -> None:
    assert stat.S_IMODE(tls_box.data.stat().st_mode) == 0o700
    checked = 0
    for p in [tls_box.data, *tls_box.data.rglob("*")]:
        mode = stat.S_IMODE(p.lstat().st_mode)
        assert mode & 0o077 == 0, f"{p} is {mode:o}"
        checked += 1
    assert stat.S_IMODE((tls_box.data / "admin.key").stat().st_mode) == 0o600
    assert checked >= 5


def test_tls_needs_both_cert_and_key(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    env.update({"APPLIANCE_CONFIG": os.devnull, "APPLIANCE_TLS_CERT": str(tmp_path / "c")})
    proc = subprocess.run([str(BIN / "appliance"), "--data-dir", str(tmp_path / "d"), "serve",
                           "--port", str(free_port())], env=env, capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode != 0
    assert "tls" in proc.stderr.lower() and "Traceback" not in proc.stderr, proc.stderr

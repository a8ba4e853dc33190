"""Health check after a switch: ``GET /readyz``, then a probe only the started box can answer.

The probe never carries the admin key (nor any API key). The updater writes a one-time
token (``<data_dir>/health.token``, 0600, expires after ``TOKEN_TTL`` seconds) that the box
accepts for ``POST /healthz/probe`` only. The request carries ``nonce`` and
``proof = HMAC(token, "request" + nonce)``; the box checks the proof, runs one real inference
and answers ``pid`` and ``HMAC(token, "answer" + nonce + pid)``. Whoever binds the port while
the service restarts learns nothing reusable (a nonce and one HMAC of it) and cannot answer:
it does not know the token. When the service manager knows the pid it started, the answer
must come from that pid.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from firmware.errors import HealthCheckError
from storage.files import atomic_write

log = logging.getLogger(__name__)

PROBE_PATH = "/healthz/probe"
TOKEN_FILE = "health.token"
TOKEN_TTL = 900


def probe_proof(token: str, nonce: str) -> str:
    """What the updater sends: proves it holds the token without revealing it."""
    return hmac.new(token.encode(), f"appliance-probe-request\0{nonce}".encode(),
                    hashlib.sha256).hexdigest()


def probe_answer(token: str, nonce: str, pid: int) -> str:
    """What the box answers: proves the answering process holds the token, and its pid."""
    return hmac.new(token.encode(), f"appliance-probe-answer\0{nonce}\0{pid}".encode(),
                    hashlib.sha256).hexdigest()


def write_token(data_dir: Path, now: float | None = None, ttl: int = TOKEN_TTL) -> str:
    """Create the one-time probe token (0600, owned like ``data_dir``); return it."""
    token = secrets.token_hex(32)
    expires = int((time.time() if now is None else now) + ttl)
    path = Path(data_dir) / TOKEN_FILE
    atomic_write(path, json.dumps({"token": token, "expires_at": expires}).encode(), mode=0o600)
    if os.geteuid() == 0:  # the updater runs as root, the service as the data dir's owner
        st = Path(data_dir).stat()
        os.chown(path, st.st_uid, st.st_gid)
    return token


def read_token(data_dir: Path, now: float) -> str | None:
    """The probe token if one exists and has not expired; else None."""
    try:
        doc = json.loads((Path(data_dir) / TOKEN_FILE).read_text())
        token, expires = doc["token"], doc["expires_at"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(token, str) or not isinstance(expires, int) or now >= expires:
        return None
    return token


@dataclass(frozen=True)
class HealthCheck:
    """Where and how to probe the service.

    ``token_dir`` is where the one-time probe token is written for each run (the box's data
    directory) and removed after it; ``token`` gives a fixed token instead (tests). Without
    either only readiness is checked. ``inference=False`` skips the inference inside the
    probe. ``pid`` returns the pid of the process the service manager started (None when
    unknown).
    """

    base_url: str = "http://127.0.0.1:8080"
    ready_path: str = "/readyz"
    probe_path: str = PROBE_PATH
    token: str | None = field(default=None, repr=False)
    token_dir: Path | None = None
    inference: bool = True
    model: str | None = None
    pid: Callable[[], int | None] | None = None
    timeout: float = 120.0
    interval: float = 0.25

    def run(self, alive: Callable[[], bool] | None = None) -> None:
        """Wait for readiness, then probe; raise HealthCheckError on failure.

        ``alive`` (e.g. ``ServiceManager.is_running``) lets a crashed service fail fast.
        """
        deadline = time.monotonic() + self.timeout
        last = "no answer"
        with httpx.Client(base_url=self.base_url,
                          timeout=max(1.0, min(30.0, self.timeout))) as client:
            while True:
                if alive is not None and not alive():
                    raise HealthCheckError(f"the service exited before it was ready ({last})")
                try:
                    r = client.get(self.ready_path)
                    if r.status_code == 200:
                        break
                    last = f"{self.ready_path} answered {r.status_code}"
                except httpx.HTTPError as exc:
                    last = f"{self.ready_path}: {type(exc).__name__}"
                if time.monotonic() >= deadline:
                    raise HealthCheckError(f"not ready within {self.timeout:g}s: {last}")
                time.sleep(self.interval)
            if self.token is not None:
                self._probe(client, deadline, self.token)
            elif self.token_dir is not None:
                token = write_token(self.token_dir)
                try:
                    self._probe(client, deadline, token)
                finally:
                    (Path(self.token_dir) / TOKEN_FILE).unlink(missing_ok=True)
        log.info("health check passed at %s", self.base_url)

    def _probe(self, client: httpx.Client, deadline: float, token: str) -> None:
        nonce = secrets.token_hex(16)
        body = {"nonce": nonce, "proof": probe_proof(token, nonce),
                "inference": self.inference, "model": self.model}
        try:
            r = client.post(self.probe_path, json=body,
                            timeout=max(1.0, deadline - time.monotonic()))
        except httpx.HTTPError as exc:
            raise HealthCheckError(f"probe {self.probe_path} failed: "
                                   f"{type(exc).__name__}: {exc}") from exc
        if r.status_code != 200:
            raise HealthCheckError(f"probe {self.probe_path} answered {r.status_code}: "
                                   f"{r.text[:200]}")
        try:
            doc = r.json()
            pid, answer = int(doc["pid"]), str(doc["answer"])
        except (ValueError, KeyError, TypeError) as exc:
            raise HealthCheckError(f"probe answer is malformed: {r.text[:200]}") from exc
        if not hmac.compare_digest(answer, probe_answer(token, nonce, pid)):
            raise HealthCheckError("the process on the port does not hold the probe token: "
                                   "it is not the service this update started")
        expected = self.pid() if self.pid is not None else None
        if expected is not None and expected != pid:
            raise HealthCheckError(f"the probe was answered by pid {pid}, but the service "
                                   f"started as pid {expected}")

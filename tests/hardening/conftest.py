"""Helpers for the hardening tests: fresh boxes of their own, admin calls, seats, metrics.

Every module that may damage a box's state (fuzzing, SIGKILL, load) starts its own server
through ``fresh_box``; its model store is a tree of hard links to the shared test store, so
a fuzzed ``DELETE /admin/models/{name}`` can never remove the session's model files.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from appliance.modelstore import ModelStore
from licensing.issuer import issue, parse_request
from tests.conftest import Box, linked_models

FULL = os.environ.get("HARDENING_FULL") == "1"


def start_box(tmp: Path, models: Path, vendor_key, env: dict[str, str] | None = None) -> Box:
    return Box(tmp / "data", models,
               env={"TEST_TRUSTED_KEYS_FILE": str(vendor_key.trusted_file), **(env or {})})


@pytest.fixture(scope="module")
def fresh_box(model_store: ModelStore, tmp_path_factory: pytest.TempPathFactory, vendor_key
              ) -> Iterator[Box]:
    """A server of this module's own, on its own data dir and linked model store."""
    tmp = tmp_path_factory.mktemp("hbox")
    models = linked_models(model_store.root, tmp / "models")
    box = start_box(tmp, models, vendor_key)
    yield box
    box.stop()


def admin(box: Box, method: str, path: str, key: str | None = None, **kw) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key or box.api_key}", **kw.pop("headers", {})}
    return httpx.request(method, box.base_url + path, timeout=60, headers=headers, **kw)


def license_box(box: Box, vendor_key, seats: int) -> None:
    """Replace the evaluation licence by a signed one with ``seats`` seats."""
    req = admin(box, "POST", "/admin/licence/request")
    assert req.status_code == 200, req.text
    activation = issue(parse_request(req.content), vendor_key.key, customer="Hardening",
                       seats=seats, days=365, models="*", features="*", now=int(time.time()))
    r = admin(box, "POST", "/admin/licence/import", content=activation)
    assert r.status_code == 200, r.text


def new_seat(box: Box, name: str, **limits: int) -> tuple[int, str]:
    """(seat id, API key) of a new user seat with the given limits."""
    r = admin(box, "POST", "/admin/seats", json={"name": name, "role": "user", **limits})
    assert r.status_code == 201, r.text
    seat_id = r.json()["id"]
    k = admin(box, "POST", f"/admin/seats/{seat_id}/keys")
    assert k.status_code == 201, k.text
    return seat_id, k.json()["key"]


def gauge(box: Box, name: str) -> float:
    """Sum of a gauge over its label sets in /metrics; AssertionError when it is absent."""
    text = httpx.get(box.base_url + "/metrics", timeout=30,
                     headers={"Authorization": f"Bearer {box.api_key}"}).text
    found = list(re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.eE+-]+)$", text, re.M))
    assert found, f"{name} is not in /metrics"
    return sum(float(m.group(1)) for m in found)


def wait_for(cond, timeout: float = 30.0, every: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(every)
    return bool(cond())


def is_error_shape(body: object) -> bool:
    """``{"error": {"message", "type", "param", "code"}}`` with a non-empty message."""
    if not isinstance(body, dict) or set(body) != {"error"}:
        return False
    err = body["error"]
    return (isinstance(err, dict) and set(err) >= {"message", "type", "param", "code"}
            and isinstance(err["message"], str) and bool(err["message"])
            and isinstance(err["type"], str))

"""Issue 12 through the real server: a seat holder's attacks, each refused now.

Items 2 (vision entitlements), 8 (tokens_per_day overrun), 12 (lone surrogate, /metrics
without a key, unlimited keys per seat). The licensing-level attacks (3-6, 10) are in
tests/licensing/test_attacks.py, the update health check (9) in
tests/firmware/test_health_probe.py.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import cv2
import httpx
import numpy as np
import pytest

from licensing.issuer import issue, parse_request
from tests.conftest import DETECTOR, LLM, OCR
from tests.hardening.conftest import admin, new_seat

pytestmark = pytest.mark.slow


def _licence(box, vendor_key, models: str, features: str) -> None:
    req = admin(box, "POST", "/admin/licence/request")
    assert req.status_code == 200, req.text
    activation = issue(parse_request(req.content), vendor_key.key, customer="Attacks",
                       seats=6, days=365, models=models, features=features,
                       now=int(time.time()))  # fmt: skip
    r = admin(box, "POST", "/admin/licence/import", content=activation)
    assert r.status_code == 200, r.text


def _png() -> bytes:
    img = np.full((64, 96, 3), 255, np.uint8)
    cv2.putText(img, "AB", (10, 45), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (0, 0, 0), 2)
    return cv2.imencode(".png", img)[1].tobytes()


def _post(box, key: str, path: str, **kw) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}", **kw.pop("headers", {})}
    return httpx.post(box.base_url + path, timeout=120, headers=headers, **kw)


def test_attack_2_vision_checks_entitlements(fresh_box, vendor_key) -> None:
    _licence(fresh_box, vendor_key, "smollm2-*", "chat")
    _, key = new_seat(fresh_box, "narrow")
    png = {"file": ("x.png", _png(), "image/png")}
    r = _post(fresh_box, key, "/v1/vision/ocr", files=png, data={"model": OCR})
    assert r.status_code == 403 and r.json()["error"]["code"] == "not_entitled", r.text
    r = _post(fresh_box, key, "/v1/vision/detect", files=png, data={"model": DETECTOR})
    assert r.status_code == 403 and r.json()["error"]["code"] == "not_entitled", r.text
    r = _post(fresh_box, key, "/v1/embeddings", json={"model": LLM, "input": "hi"})
    assert r.status_code == 403
    r = _post(fresh_box, key, "/v1/chat/completions", json={
        "model": LLM, "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]})
    assert r.status_code == 200, r.text


def test_attack_12_lone_surrogate_in_chat_is_400(fresh_box) -> None:
    body = (b'{"model": "' + LLM.encode() + b'", "max_tokens": 2, "messages": '
            b'[{"role": "user", "content": "hi \\ud800"}]}')
    r = _post(fresh_box, fresh_box.api_key, "/v1/chat/completions", content=body,
              headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert "not valid Unicode" in r.json()["error"]["message"]
    r = admin(fresh_box, "POST", "/admin/seats", content=(
        b'{"name": "ok", "contact": "\\ud800"}'), headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text


def test_attack_12_metrics_needs_a_key(fresh_box) -> None:
    assert httpx.get(fresh_box.base_url + "/metrics").status_code == 401
    _, key = new_seat(fresh_box, "peeker")
    r = httpx.get(fresh_box.base_url + "/metrics", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 403
    r = httpx.get(fresh_box.base_url + "/metrics",
                  headers={"Authorization": f"Bearer {fresh_box.api_key}"})
    assert r.status_code == 200 and "appliance_requests_total" in r.text


def test_attack_12_a_seat_holds_at_most_two_keys(fresh_box) -> None:
    seat_id, _ = new_seat(fresh_box, "department")
    assert admin(fresh_box, "POST", f"/admin/seats/{seat_id}/keys").status_code == 201
    r = admin(fresh_box, "POST", f"/admin/seats/{seat_id}/keys")
    assert r.status_code == 409 and "limit is 2" in r.json()["error"]["message"], r.text


def test_attack_8_tokens_per_day_cannot_be_overrun(fresh_box, vendor_key) -> None:
    _licence(fresh_box, vendor_key, "*", "*")
    _, key = new_seat(fresh_box, "thrifty", tokens_per_day=120)
    r = _post(fresh_box, key, "/v1/embeddings", json={"model": LLM, "input": "word " * 800})
    assert r.status_code == 429, r.text

    def chat(_: int) -> int:
        return _post(fresh_box, key, "/v1/chat/completions", json={
            "model": LLM, "max_tokens": 30, "temperature": 0,
            "messages": [{"role": "user", "content": "Count to one hundred."}]}).status_code

    with ThreadPoolExecutor(3) as pool:
        codes = list(pool.map(chat, range(3)))
    assert 429 in codes and set(codes) <= {200, 429}, codes
    used = httpx.get(fresh_box.base_url + "/v1/usage", timeout=30,
                     headers={"Authorization": f"Bearer {key}"}).json()["data"]
    total = sum(d["tokens_in"] + d["tokens_out"] for d in used)
    assert total <= 120, used

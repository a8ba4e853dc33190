"""Seats, keys, limits, metering and licence import through the real server."""

from __future__ import annotations

import socket
import time
from csv import DictReader
from io import StringIO

import httpx
import openai
import pytest

from licensing.issuer import issue, parse_request
from tests.conftest import LLM

pytestmark = pytest.mark.slow


def admin(box, method: str, path: str, **kw) -> httpx.Response:
    return httpx.request(method, box.base_url + path, timeout=60,
                         headers={"Authorization": f"Bearer {box.api_key}"}, **kw)


def new_seat(box, name: str, **limits) -> tuple[int, str]:
    r = admin(box, "POST", "/admin/seats", json={"name": name, "role": "user", **limits})
    assert r.status_code == 201, r.text
    seat_id = r.json()["id"]
    k = admin(box, "POST", f"/admin/seats/{seat_id}/keys")
    assert k.status_code == 201, k.text
    return seat_id, k.json()["key"]


def oa(box, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=box.base_url + "/v1", api_key=key, max_retries=0)


def test_no_key_or_bad_key_is_authentication_error(box) -> None:
    with pytest.raises(openai.AuthenticationError):
        oa(box, "sk-box-not-a-real-key").models.list()
    r = httpx.get(box.base_url + "/v1/models")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_evaluation_is_marked(box) -> None:
    r = httpx.get(box.base_url + "/v1/models",
                  headers={"Authorization": f"Bearer {box.api_key}"})
    assert r.headers["x-licence-state"] in ("evaluation", "valid")
    if r.headers["x-licence-state"] == "evaluation":
        assert r.json()["licence"] == "EVALUATION"
        assert "EVALUATION" in r.json()["data"][0]["owned_by"]


def test_seat_key_lifecycle_with_openai_client(box) -> None:
    seat_id, key = new_seat(box, "alice")
    client = oa(box, key)
    reply = client.chat.completions.create(model=LLM, max_tokens=3, temperature=0,
                                           messages=[{"role": "user", "content": "Hi"}])
    assert reply.usage.completion_tokens > 0
    assert httpx.get(box.base_url + "/admin/seats",
                     headers={"Authorization": f"Bearer {key}"}).status_code == 403
    keys = admin(box, "GET", f"/admin/seats/{seat_id}/keys").json()
    assert keys[0]["prefix"] and "key" not in keys[0]
    assert admin(box, "POST", f"/admin/keys/{keys[0]['id']}/revoke").status_code == 200
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
    rotated = admin(box, "POST", f"/admin/seats/{seat_id}/keys").json()["key"]
    assert oa(box, rotated).models.list().data
    admin(box, "DELETE", f"/admin/seats/{seat_id}")


def test_usage_is_metered_per_seat_and_private(box) -> None:
    a_id, a_key = new_seat(box, "seat-a")
    b_id, b_key = new_seat(box, "seat-b")
    try:
        oa(box, a_key).completions.create(model=LLM, prompt="One two", max_tokens=3)
        oa(box, a_key).embeddings.create(model=LLM, input="hello")
        mine = httpx.get(box.base_url + "/v1/usage",
                         headers={"Authorization": f"Bearer {a_key}"}).json()
        assert mine["seat_id"] == a_id and mine["data"][0]["requests"] == 2
        theirs = httpx.get(box.base_url + "/v1/usage",
                           headers={"Authorization": f"Bearer {b_key}"}).json()
        assert theirs["seat_id"] == b_id and theirs["data"] == []
        rows = admin(box, "GET", "/admin/usage", params={"seat_id": a_id}).json()
        # the two inference calls plus the /v1/usage read itself
        assert rows[0]["requests"] == 3 and rows[0]["completion_tokens"] == 3
        csv = admin(box, "GET", "/admin/usage.csv", params={"seat_id": a_id})
        assert csv.headers["content-type"].startswith("text/csv")
        assert csv.text.count("\n") == 4  # header + 3 rows
        # each row names the box that served it: this single box, by its host name
        served = {row["box"] for row in DictReader(StringIO(csv.text))}
        assert served == {socket.gethostname()}
    finally:
        admin(box, "DELETE", f"/admin/seats/{a_id}")
        admin(box, "DELETE", f"/admin/seats/{b_id}")


def test_seat_beyond_licence_is_refused(box) -> None:
    capacity = admin(box, "GET", "/admin/licence").json()["seats"]
    used = len(admin(box, "GET", "/admin/seats").json())
    made = []
    try:
        for i in range(capacity - used):
            made.append(new_seat(box, f"filler-{i}")[0])
        r = admin(box, "POST", "/admin/seats", json={"name": "one-too-many"})
        assert r.status_code == 409 and r.json()["error"]["code"] == "seat_limit"
        assert str(capacity) in r.json()["error"]["message"]
    finally:
        for seat_id in made:
            admin(box, "DELETE", f"/admin/seats/{seat_id}")


def test_requests_per_minute_limit_is_429_with_retry_after(box) -> None:
    seat_id, key = new_seat(box, "limited", requests_per_minute=2)
    try:
        hdr = {"Authorization": f"Bearer {key}"}
        codes = [httpx.get(box.base_url + "/v1/models", headers=hdr) for _ in range(3)]
        assert [c.status_code for c in codes] == [200, 200, 429]
        assert int(codes[2].headers["retry-after"]) >= 1
        with pytest.raises(openai.RateLimitError):
            oa(box, key).models.list()
    finally:
        admin(box, "DELETE", f"/admin/seats/{seat_id}")


def test_keys_never_in_logs_or_database(box) -> None:
    seat_id, key = new_seat(box, "secretive")
    oa(box, key).models.list()
    admin(box, "DELETE", f"/admin/seats/{seat_id}")
    time.sleep(0.2)
    secret_part = key.split(".", 1)[1]  # the random part (it may itself contain "-")
    for path in box.data_dir.rglob("*"):
        if path.is_file() and path.name != "admin.key":
            assert secret_part.encode() not in path.read_bytes(), path


def test_audit_log_records_admin_actions_and_verifies(box) -> None:
    seat_id, _ = new_seat(box, "audited")
    admin(box, "DELETE", f"/admin/seats/{seat_id}")
    audit = admin(box, "GET", "/admin/audit", params={"limit": 50}).json()
    actions = [r["action"] for r in audit["rows"]]
    assert audit["chain_ok"] and "seat.create" in actions and "seat.delete" in actions


def test_activation_round_trip_through_admin_api(box, vendor_key) -> None:
    req = admin(box, "POST", "/admin/licence/request")
    assert req.status_code == 200 and "fingerprint" in req.json()
    activation = issue(parse_request(req.content), vendor_key.key, customer="ACME",
                       seats=5, days=365, models="*", features="*", now=int(time.time()))
    tampered = bytearray(activation)
    tampered[activation.index(b"ACME")] ^= 0x01
    bad = admin(box, "POST", "/admin/licence/import", content=bytes(tampered))
    assert bad.status_code == 400 and bad.json()["error"]["message"]
    assert admin(box, "GET", "/admin/licence").json()["evaluation"] is True
    ok = admin(box, "POST", "/admin/licence/import", content=activation)
    assert ok.status_code == 200, ok.text
    lic = ok.json()
    assert lic["state"] == "valid" and lic["customer"] == "ACME" and lic["seats"] == 5
    r = httpx.get(box.base_url + "/v1/models", headers={"Authorization": f"Bearer {box.api_key}"})
    assert r.headers["x-licence-state"] == "valid"


def test_admin_status_and_models(box) -> None:
    st = admin(box, "GET", "/admin/status")
    assert st.status_code == 200
    body = st.json()
    assert {"licence", "models", "stats"} <= body.keys()
    assert body["stats"]["requests_total"] > 0
    v = admin(box, "POST", f"/admin/models/{LLM}/verify")
    assert v.json() == {"name": LLM, "ok": True, "problems": []}
    assert admin(box, "POST", "/admin/models/nope/load").status_code == 404

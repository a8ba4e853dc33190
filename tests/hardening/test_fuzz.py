"""Schemathesis over the box's own OpenAPI document, with and without a seat key.

Every operation in ``GET /openapi.json`` of a running box (vision routes included when the
box has them) gets positive and negative cases from schemathesis, sent with the admin key,
a user seat's key and no key. What must hold for every case: no 5xx, every 4xx in the
OpenAI error shape, and a healthy server afterwards. The raw-body admin routes (licence
import, update inspect/apply) are not described by a schema, so they also get random bytes.

The fuzz runs against a box of its own. Two cases are refused before sending because they
would only destroy the fixture's state: deleting the admin seat and revoking/rotating the
admin's key. Generation is bounded to 4 tokens so a fuzzed ``max_tokens`` cannot make one
case run for minutes on 2 cores.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.hardening.conftest import FULL, admin, is_error_shape, new_seat

pytestmark = pytest.mark.slow
log = logging.getLogger(__name__)

EXAMPLES = 60 if FULL else 6
RAW_EXAMPLES = 200 if FULL else 15
RAW_ROUTES = ("/admin/licence/import", "/admin/updates/inspect", "/admin/updates/apply")
GENERATION_ROUTES = ("/v1/chat/completions", "/v1/completions")
MAX_TOKENS = 4


class Tally:
    def __init__(self) -> None:
        self.cases = 0
        self.by_status: collections.Counter[int] = collections.Counter()
        self.failures: list[str] = []

    def check(self, label: str, status: int, body: bytes, ctype: str) -> None:
        self.cases += 1
        self.by_status[status] += 1
        if status >= 500:
            self.failures.append(f"{label}: {status} {body[:300]!r}")
        elif status >= 400:
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None
            if not is_error_shape(parsed) or "json" not in ctype:
                self.failures.append(f"{label}: {status} not in the error shape: {body[:300]!r}")


def _header(headers, name: str) -> str:
    """A header from requests' or schemathesis' response (the latter maps names to lists)."""
    value = headers.get(name) or headers.get(name.title()) or ""
    return ", ".join(value) if isinstance(value, list) else str(value)


def _bound(case) -> None:
    """Keep generation short (a fuzzed max_tokens of 10^9 is valid and would take minutes)."""
    if case.path in GENERATION_ROUTES and isinstance(case.body, dict):
        for name in ("max_tokens", "max_completion_tokens"):
            value = case.body.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value > MAX_TOKENS:
                case.body[name] = MAX_TOKENS
        if case.body.get("max_tokens") is None and case.body.get(
                "max_completion_tokens") is None:
            case.body["max_tokens"] = MAX_TOKENS


def test_fuzz_every_route_with_and_without_keys(fresh_box) -> None:
    box = fresh_box
    admin_key = box.api_key
    _, user_key = new_seat(box, "fuzz-user", max_concurrent=0, requests_per_minute=0,
                           tokens_per_day=0)
    admin_key_id = admin_key.split("-")[2].split(".")[0]
    admin_seat = next(s["id"] for s in admin(box, "GET", "/admin/seats").json()
                      if s["role"] == "admin")

    schema = schemathesis.openapi.from_url(box.base_url + "/openapi.json")
    operations = [op.ok() for op in schema.get_all_operations()]
    assert len(operations) >= 30, "the box should document its whole API"
    tally = Tally()
    auths = {"admin": {"Authorization": f"Bearer {admin_key}"},
             "user": {"Authorization": f"Bearer {user_key}"}, "none": {}}
    session = requests.Session()

    for op in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            for who, headers in auths.items():
                _fuzz_operation(box.base_url, session, tally, op, mode, who, headers,
                                admin_seat, admin_key_id)

    # Raw-body routes: random bytes, a truncated JSON document and deep nesting.
    junk = st.one_of(st.binary(max_size=4096),
                     st.builds(lambda n: b"[" * n + b"]" * n, st.integers(1, 100_000)),
                     st.builds(lambda n: b'{"a":' * n + b"1" + b"}" * n, st.integers(1, 50_000)),
                     st.just(b'{"licence": '), st.just(b"PK\x03\x04" + b"\0" * 100))
    for route in RAW_ROUTES:
        _fuzz_raw(box, tally, route, junk)

    print(f"\nfuzz: {tally.cases} cases over {len(operations)} operations; "
          f"statuses {dict(sorted(tally.by_status.items()))}")
    assert tally.cases >= len(operations) * 6
    assert not tally.failures, f"{len(tally.failures)} bad answers:\n" + "\n".join(
        tally.failures[:40])
    # Still healthy and still the same box: admin key valid, database answers, model intact.
    assert httpx.get(box.base_url + "/healthz").status_code == 200
    assert httpx.get(box.base_url + "/readyz").status_code == 200
    assert admin(box, "GET", "/admin/status").status_code == 200
    log_text = box.log_path.read_text(errors="replace")
    assert "Traceback" not in log_text, log_text[-3000:]


def _fuzz_operation(base_url, session, tally, op, mode, who, headers, admin_seat,
                    admin_key_id) -> None:
    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck), derandomize=not FULL)
    @given(case=op.as_strategy(generation_mode=mode))
    def run(case) -> None:
        params = case.path_parameters or {}
        if case.method.upper() == "DELETE" and str(params.get("seat_id")) == str(admin_seat):
            return  # would delete the admin seat this test runs on
        if str(params.get("key_id")) == admin_key_id:
            return  # would revoke the admin key this test runs on
        _bound(case)
        try:
            resp = case.call(base_url=base_url, session=session, headers=dict(headers),
                             timeout=60)
        except (requests.exceptions.InvalidHeader, requests.exceptions.InvalidURL,
                UnicodeError, ValueError):
            return  # the client library refused to send it; nothing reached the box
        tally.check(f"{case.method} {case.formatted_path} [{who}, {mode.value}]",
                    resp.status_code, resp.content, _header(resp.headers, "content-type"))

    # Unsatisfiable: e.g. no negative case exists for an operation without parameters.
    with contextlib.suppress(Unsatisfiable):
        run()


def _fuzz_raw(box, tally, route, junk) -> None:
    @settings(max_examples=RAW_EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck), derandomize=not FULL)
    @given(body=junk)
    def raw(body: bytes) -> None:
        r = admin(box, "POST", route, content=body,
                  headers={"Content-Type": "application/octet-stream"})
        tally.check(f"POST {route} [admin, raw {len(body)} bytes]", r.status_code,
                    r.content, r.headers.get("content-type", ""))

    raw()


BIG = str(10**30)
PINNED = [  # cases the fuzz found once (500s from SQLite integer overflow), kept as regressions
    ("GET", f"/admin/usage?seat_id={BIG}"), ("GET", f"/admin/usage.csv?seat_id={BIG}"),
    ("GET", "/admin/usage.csv?since=1e300"), ("GET", "/admin/usage.csv?since=nan"),
    ("GET", "/admin/usage.csv?since=-inf"), ("DELETE", f"/admin/seats/{BIG}"),
    ("GET", f"/admin/seats/{BIG}/keys"), ("POST", f"/admin/seats/{BIG}/keys"),
    ("GET", f"/admin/seats/-{BIG}/keys"), ("GET", "/admin/audit?q=%00"),
    ("POST", f"/admin/keys/{'f' * 5000}/revoke"), ("GET", f"/v1/models/{'%00' * 10}"),
    ("GET", "/no/such/route"), ("PUT", "/v1/chat/completions"), ("GET", "/v1/embeddings"),
    ("DELETE", "/admin/seats"), ("POST", "/healthz"),
]


@pytest.mark.parametrize(("method", "path"), PINNED, ids=[f"{m} {p[:40]}" for m, p in PINNED])
def test_pinned_edge_cases_are_4xx_in_error_shape(fresh_box, method: str, path: str) -> None:
    r = admin(fresh_box, method, path)
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        assert is_error_shape(r.json()), r.text

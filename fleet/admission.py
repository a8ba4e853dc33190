"""Joining a fleet under its licence: the box's signed join request and the head's answer.

Before ``appliance fleet join`` starts this box's Ray node it asks the head's API
(``POST /fleet/join``, the join token as bearer) whether the fleet's licence lets this box
in; the head checks the token, then the licence (``LicenseGuard.admit_box``), and answers
200 or 403 ``fleet_join_refused`` naming why. The request is signed with this box's own
key (``licensing.fleet``), so it proves which box asks. Plain Python; no Ray.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fleet.boxapi import error_message
from fleet.errors import FleetError, JoinRefusedError
from fleet.token import read_token
from licensing.activation import Activation
from licensing.errors import BoxNotLicensed, LicenseError, SignatureError
from licensing.fingerprint import collect_facts
from licensing.fleet import join_request
from licensing.guard import LicenseGuard

JOIN_PATH = "/fleet/join"
MAX_JOIN_BYTES = 64 * 1024


def make_join_request(data_dir: Path, box: str,
                      facts: Callable[[], Mapping[str, str]] = collect_facts) -> bytes:
    """This box's join request, signed with its box key (the one its activation request
    named; run ``appliance-license request`` on it first, for the fleet request)."""
    act = Activation(data_dir, {}, facts=facts)
    if not (data_dir / "box.key").is_file():
        raise JoinRefusedError(f"this box has no box key in {data_dir}: run "
                               "`appliance-license request` here and have the vendor name "
                               "it in the fleet licence")
    try:
        return join_request(box, act.fingerprint(), act.box_key(), int(time.time()))
    except LicenseError as exc:
        raise JoinRefusedError(f"cannot make this box's join request: {exc}") from exc


def check_token(token_file: Path, presented: str) -> None:
    """JoinRefusedError unless ``presented`` is this head's join token."""
    try:
        mine = read_token(token_file)
    except JoinRefusedError as exc:
        raise JoinRefusedError(f"this box is not a fleet head ({exc})") from exc
    if not hmac.compare_digest(mine.encode(), presented.encode()):
        raise JoinRefusedError("wrong fleet token: copy the head's join.token")


def admit(guard: LicenseGuard, token_file: Path, authorization: str, body: bytes
          ) -> dict[str, Any]:
    """The head's side of a join (blocking): token, then licence. JoinRefusedError (403
    ``fleet_join_refused``) naming why a box may not join."""
    scheme, _, presented = authorization.partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise JoinRefusedError("a join needs the fleet token: Authorization: Bearer <token>")
    check_token(token_file, presented.strip())
    if len(body) > MAX_JOIN_BYTES:
        raise JoinRefusedError("the join request is too large")
    try:
        claim, admission = guard.admit_box(body)
    except (BoxNotLicensed, SignatureError) as exc:
        raise JoinRefusedError(str(exc)) from exc
    licence = guard.status().licence
    return {"box": claim.box, "admitted": admission.how, "licence_id": licence.licence_id,
            "fingerprint": admission.fingerprint.describe(), "seats": licence.seats}


def ask_head(api: str, token: str, request: bytes, timeout: float = 30.0) -> dict[str, Any]:
    """The joining box's side: send ``request`` to the head's API at ``api``; the answer,
    or JoinRefusedError with the head's reason."""
    import httpx

    try:
        r = httpx.post(api.rstrip("/") + JOIN_PATH, content=request, timeout=timeout,
                       headers={"Authorization": f"Bearer {token}",
                                "Content-Type": "application/json"})
    except httpx.HTTPError as exc:
        raise FleetError(f"cannot reach the head's API at {api} to check the fleet licence "
                         f"({exc}); is `appliance serve` running there? (--api URL)") from exc
    if r.status_code == 200:
        return r.json()
    message = error_message(r)
    if r.status_code in (400, 401, 403):
        raise JoinRefusedError(f"the head refused this box: {message}")
    raise FleetError(f"the head answered {r.status_code}: {message}")

"""Admin API: seats, API keys, usage, licence and audit log (admin-role keys only).

Also ``GET /v1/usage``: any seat reads its own usage, and only its own.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field

from appliance.deps import AdminDep, CallDep, GuardDep
from licensing.guard import LicenseGuard
from licensing.seats import IssuedKey, KeyInfo, Seat, SeatLimits, utc_day

router = APIRouter(tags=["admin"])
MAX_ACTIVATION_BYTES = 256 << 10
# Bounds of what SQLite can store: larger numbers are refused with 400 instead of
# overflowing the database driver (a 500).
SQLITE_MAX_INT = 2**63 - 1
SeatId = Annotated[int, Path(ge=0, le=SQLITE_MAX_INT)]
SeatFilter = Annotated[int | None, Query(ge=0, le=SQLITE_MAX_INT)]
EpochSeconds = Annotated[float, Query(ge=0, le=1e12)]


class LimitsIn(BaseModel):
    """A seat's limits; fields left out keep their value (or the default)."""

    max_concurrent: int | None = Field(None, ge=0, le=1024)
    requests_per_minute: int | None = Field(None, ge=0, le=1_000_000)
    tokens_per_day: int | None = Field(None, ge=0, le=10**12)
    share: int | None = Field(None, ge=1, le=100, description="Weight in the LLM queue.")
    priority: Literal["interactive", "batch"] | None = Field(
        None, description="'batch': served only when interactive seats leave room.")
    egress: Literal["none", "llm", "llm+vision"] | None = Field(
        None, description="Which requests may overflow to a remote endpoint when the box "
        "is saturated: 'none' (the default), 'llm' (language-model requests without "
        "images), 'llm+vision' (images in chat messages too). Audited as seat.egress.")

    def limits(self, base: SeatLimits | None = None) -> SeatLimits | None:
        given = {k: v for k, v in self.model_dump().items()
                 if k in LimitsIn.model_fields and v is not None}
        if not given and base is None:
            return None
        return replace(base or SeatLimits(), **given)


class SeatIn(LimitsIn):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[\w .@-]+$")
    contact: str = Field("", max_length=200)
    role: Literal["user", "admin"] = "user"


def _seat_json(guard: LicenseGuard, seat: Seat) -> dict[str, Any]:
    now = time.time()
    today, month = utc_day(now), utc_day(now)[:7]
    days = {t.period: t for t in guard.seats.usage_totals(seat.id, "day", limit=1)}
    months = {t.period: t for t in guard.seats.usage_totals(seat.id, "month", limit=1)}
    d, m = days.get(today), months.get(month)
    return seat.to_json() | {
        "created": seat.created_at,
        "requests_today": d.requests if d else 0, "requests_month": m.requests if m else 0,
        "tokens_today": (d.tokens_in + d.tokens_out) if d else 0,
        "tokens_month": (m.tokens_in + m.tokens_out) if m else 0,
        "images_month": m.images if m else 0,
    }


def _key_json(info: KeyInfo) -> dict[str, Any]:
    return {"id": info.key_id, "seat_id": info.seat_id, "prefix": info.prefix,
            "created": info.created_at, "revoked": not info.active,
            "revoked_at": info.revoked_at}


def _issued_json(issued: IssuedKey) -> dict[str, Any]:
    return _key_json(issued.info) | {"key": issued.secret}


# Handlers that only read the database are plain ``def``: FastAPI runs them in its thread
# pool, off the event loop.
@router.get("/admin/seats")
def list_seats(guard: GuardDep, admin: AdminDep) -> list[dict[str, Any]]:
    return [_seat_json(guard, s) for s in guard.seats.list_seats()]


@router.post("/admin/seats", status_code=201)
async def create_seat(body: SeatIn, guard: GuardDep, admin: AdminDep) -> dict[str, Any]:
    """Refused with 409 past the licence's seat count."""
    seat = await anyio.to_thread.run_sync(
        lambda: guard.create_seat(admin.name, body.name, body.contact, body.role, body.limits()))
    return _seat_json(guard, seat)


@router.delete("/admin/seats/{seat_id}")
async def delete_seat(seat_id: SeatId, guard: GuardDep, admin: AdminDep) -> dict[str, Any]:
    await anyio.to_thread.run_sync(guard.delete_seat, admin.name, seat_id)
    return {"removed": seat_id}


@router.patch("/admin/seats/{seat_id}")
async def update_seat(seat_id: SeatId, body: LimitsIn, guard: GuardDep, admin: AdminDep
                      ) -> dict[str, Any]:
    """Change a seat's limits, queue share, priority or egress policy (audited)."""
    def update() -> dict[str, Any]:
        current = guard.seats.get_seat(seat_id)
        seat = guard.set_limits(admin.name, seat_id, body.limits(current.limits))
        return _seat_json(guard, seat)

    return await anyio.to_thread.run_sync(update)


@router.get("/admin/seats/{seat_id}/keys")
def list_keys(seat_id: SeatId, guard: GuardDep, admin: AdminDep) -> list[dict[str, Any]]:
    guard.seats.get_seat(seat_id)
    return [_key_json(k) for k in guard.seats.list_keys(seat_id)]


@router.post("/admin/seats/{seat_id}/keys", status_code=201)
async def issue_key(seat_id: SeatId, guard: GuardDep, admin: AdminDep) -> dict[str, Any]:
    """A new key; ``key`` is the secret and is shown this once only."""
    issued = await anyio.to_thread.run_sync(guard.issue_key, admin.name, seat_id)
    return _issued_json(issued)


@router.post("/admin/keys/{key_id}/revoke")
async def revoke_key(key_id: str, guard: GuardDep, admin: AdminDep) -> dict[str, Any]:
    return _key_json(await anyio.to_thread.run_sync(guard.revoke_key, admin.name, key_id))


@router.post("/admin/keys/{key_id}/rotate", status_code=201)
async def rotate_key(key_id: str, guard: GuardDep, admin: AdminDep) -> dict[str, Any]:
    return _issued_json(await anyio.to_thread.run_sync(guard.rotate_key, admin.name, key_id))


@router.get("/admin/usage")
def usage(guard: GuardDep, admin: AdminDep, seat_id: SeatFilter = None,
                period: Literal["day", "month"] = "day",
                limit: int = Query(31, ge=1, le=366)) -> list[dict[str, Any]]:
    seats = [guard.seats.get_seat(seat_id)] if seat_id is not None else guard.seats.list_seats()
    out = []
    for seat in seats:
        for t in guard.seats.usage_totals(seat.id, period, limit):
            out.append({"seat_id": seat.id, "seat": seat.name, "period": t.period,
                        "requests": t.requests, "errors": t.errors,
                        "prompt_tokens": t.tokens_in, "completion_tokens": t.tokens_out,
                        "images": t.images})
    return out


@router.get("/admin/usage.csv", response_class=PlainTextResponse)
def usage_csv(guard: GuardDep, admin: AdminDep, seat_id: SeatFilter = None,
                    since: EpochSeconds = 0) -> PlainTextResponse:
    text = (guard.seats.usage_csv(seat_id, since) if seat_id is not None
            else guard.seats.usage_csv_all_seats(since))
    return PlainTextResponse(text, media_type="text/csv",
                             headers={"Content-Disposition": "attachment; filename=usage.csv"})


@router.get("/v1/usage")
def my_usage(caller: CallDep, guard: GuardDep,
             period: Literal["day", "month"] = "day") -> dict[str, Any]:
    """The calling seat's own usage totals; no seat can read another's."""
    totals = guard.seats.usage_totals(caller.seat_id, period, 31)
    return {"seat_id": caller.seat_id, "seat": caller.ctx.name,
            "data": [t.__dict__ for t in totals]}


@router.get("/admin/licence")
async def licence(guard: GuardDep, admin: AdminDep) -> dict[str, Any]:
    return await anyio.to_thread.run_sync(licence_json, guard)


@router.post("/admin/licence/request")
async def activation_request(guard: GuardDep, admin: AdminDep) -> dict[str, Any]:
    """The activation request to send to the vendor (hashed fingerprint and a nonce)."""
    def make() -> dict[str, Any]:
        req = guard.activation.make_request()
        guard.audit.append(admin.name, "licence.request", {"nonce": req.get("nonce")})
        return req

    return await anyio.to_thread.run_sync(make)


@router.post("/admin/licence/import")
async def import_licence(request: Request, guard: GuardDep, admin: AdminDep) -> dict[str, Any]:
    """Install the vendor's activation file (the raw JSON as the request body)."""
    data = await _read_limited(request, MAX_ACTIVATION_BYTES)
    await anyio.to_thread.run_sync(guard.import_licence, admin.name, data)
    return await anyio.to_thread.run_sync(licence_json, guard)


@router.post("/admin/licence/ack-clock")
async def ack_clock(guard: GuardDep, admin: AdminDep) -> dict[str, Any]:
    await anyio.to_thread.run_sync(guard.acknowledge_clock, admin.name)
    return await anyio.to_thread.run_sync(licence_json, guard)


@router.get("/admin/audit")
def audit(guard: GuardDep, admin: AdminDep, limit: int = Query(100, ge=1, le=1000),
          q: str | None = Query(None, max_length=200)) -> dict[str, Any]:
    """The tail of the hash-chained audit log and whether the whole chain verifies."""
    report = guard.audit.verify()
    rows = [r.to_json() for r in guard.audit.tail(1000 if q else limit)]
    if q:
        needle = q.lower()
        rows = [r for r in rows if needle in (r["actor"] + r["action"] + str(r["details"])
                                              ).lower()][-limit:]
    return {"chain_ok": report.ok, "chain_rows": report.rows, "bad_id": report.bad_id,
            "reason": report.reason, "rows": rows}


async def _read_limited(request: Request, limit: int) -> bytes:
    from licensing.errors import InvalidInput

    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise InvalidInput(f"the activation file is larger than {limit} bytes")
        chunks.append(chunk)
    if not size:
        raise InvalidInput("send the activation file as the request body")
    return b"".join(chunks)


def licence_json(guard: LicenseGuard) -> dict[str, Any]:
    """The licence as the admin API and TUI show it."""
    st = guard.status()
    lic = st.licence
    state = "locked" if st.clock_locked else ("evaluation" if lic.evaluation and
                                              lic.state == "valid" else lic.state)
    return {
        "state": state, "label": st.label, "licence_id": lic.licence_id,
        "customer": lic.customer, "seats": lic.seats, "seats_used": st.seats_used,
        "entitlements": {"models": list(lic.models), "features": list(lic.features)},
        "valid_from": lic.valid_from, "expires_at": lic.expires_at,
        "days_left": lic.days_left, "grace_days_left": lic.grace_days_left,
        "evaluation": lic.evaluation, "fingerprint_match": lic.fingerprint,
        "clock_locked": st.clock_locked, "message": st.clock_locked or lic.message,
    }

"""The licence guard on the HTTP path: who is calling, may they, and what they used.

Every ``/v1/*`` request authenticates its bearer key through ``LicenseGuard.check`` (cached
there), takes one of the seat's concurrency slots, and is metered once when its response
has been sent (streams included). ``/admin/*`` needs an admin-role key.

Routes ask ``Caller`` two things: ``entitle(model, feature)`` (403 unless the licence covers
them; every inference route, vision included) and ``reserve(need, optional)`` (hold tokens
against the seat's ``tokens_per_day`` before running; 429 if ``need`` does not fit). The
reservation is settled with the real count when the response is done.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from appliance.seatline import SeatLines
from licensing.errors import Unauthenticated
from licensing.guard import LicenseGuard, SeatContext

log = logging.getLogger(__name__)


def bearer(request: Request) -> str:
    """The API key from ``Authorization: Bearer ...`` (or ``api-key``); 401 if absent."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    alt = request.headers.get("api-key", "").strip()
    if alt:
        return alt
    raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>' "
                          "(ask the box's admin for a seat key)")


@dataclass(frozen=True)
class Caller:
    """An authenticated seat; ``entitle`` checks the licence covers a model or feature."""

    ctx: SeatContext
    guard: LicenseGuard
    state: dict[str, Any] = field(default_factory=dict, repr=False)  # the request's scope state

    @property
    def seat_id(self) -> int:
        return self.ctx.seat_id

    def entitle(self, model: str | None = None, feature: str | None = None) -> None:
        self.guard.entitle(model, feature)

    def reserve(self, need: int, optional: int = 0) -> int:
        """Hold ``need`` tokens plus what today allows of ``optional``; return how many of
        ``optional`` were granted. RateLimited (429) if ``need`` does not fit."""
        res = self.guard.reserve(self.ctx, need, optional)
        self.state.setdefault("reservations", []).append(res)
        return res.tokens - max(0, need)


def licence_headers(ctx: SeatContext) -> list[tuple[bytes, bytes]]:
    headers = [(b"x-licence-state",
                (b"evaluation" if ctx.evaluation else ctx.licence_state.encode()))]
    if ctx.licence_state == "grace":
        headers.append((b"x-licence-warning",
                        f"licence {ctx.licence_id} has expired; {ctx.days_left} day(s) of "
                        "grace left".encode()))
    elif ctx.evaluation:
        headers.append((b"x-licence-warning",
                        f"EVALUATION licence, {ctx.days_left} day(s) left".encode()))
    return headers


def make_authenticate(guard: LicenseGuard, lines: SeatLines | None = None) -> Any:
    lines = lines or SeatLines(guard.limiter)

    async def authenticate(request: Request) -> Caller:
        key = bearer(request)
        ctx = guard.check(key)
        state = request.scope.setdefault("state", {})
        state["seat_ctx"] = ctx
        state["response_headers"] = licence_headers(ctx)
        await lines.acquire(ctx)  # over max_concurrent: wait in the seat's line
        state["slot_held"] = True
        return Caller(ctx, guard, state)

    return authenticate


def make_authenticate_admin(guard: LicenseGuard) -> Any:
    async def authenticate_admin(request: Request) -> SeatContext:
        ctx = guard.check_admin(bearer(request))
        request.scope.setdefault("state", {})["admin_ctx"] = ctx
        return ctx

    return authenticate_admin


def finish_request(guard: LicenseGuard, scope: Any, route: str, status: int) -> None:
    """Release the seat's slot and meter the request (called once, after the response)."""
    state = scope.get("state") or {}
    ctx: SeatContext | None = state.get("seat_ctx")
    if ctx is None:
        return
    if state.pop("slot_held", False):
        guard.limiter.release(ctx.seat_id)
    usage = state.get("usage")
    guard.record_usage(
        ctx, route=route, model=getattr(usage, "model", "") or "", status=status,
        tokens_in=getattr(usage, "prompt_tokens", 0),
        tokens_out=getattr(usage, "completion_tokens", 0),
        images=getattr(usage, "images", 0),
        reservations=tuple(state.pop("reservations", ())))

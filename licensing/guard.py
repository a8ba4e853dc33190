"""``LicenseGuard``: the one object the API asks on every ``/v1/*`` request.

``check(api_key, model, feature)`` returns a frozen ``SeatContext`` or raises
Unauthenticated (401), ClockTampered / LicenceMissing / LicenceExpired / NotEntitled /
Forbidden (403); ``with guard.slot(ctx):`` applies per-seat limits (RateLimited -> 429).
The licence is verified once and re-read only when its file changes (checked at most every
``refresh_interval`` seconds); key -> seat lookups are cached for ``key_ttl`` seconds and
dropped at once when a key or seat changes through this guard's ``seats`` store. A key
revoked by another process (the CLI) stops working within ``key_ttl``.

Licence expiry, grace and validity are judged on trusted time (``trusted_now``: the wall
clock or the clock's high-water mark, whichever is later), never on the wall clock alone.
``reserve(ctx, need, optional)`` holds tokens against ``tokens_per_day`` before a request
runs; ``record_usage(..., reservations=...)`` settles them with the real count.

The admin methods (``create_seat``, ``issue_key``, ``revoke_key``...) write an audit row
each; admin endpoints authenticate with ``check_admin``, which works even when the licence
has expired or the clock is locked, so an admin can always repair the box.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from licensing.activation import Activation, Installed
from licensing.audit import AuditLog
from licensing.clock import DEFAULT_TOLERANCE, ClockGuard, ClockState
from licensing.errors import (
    BoxNotLicensed,
    ClockTampered,
    Forbidden,
    LicenceExpired,
    LicenceMissing,
    NotEntitled,
)
from licensing.fingerprint import collect_facts
from licensing.fleet import Admission, JoinClaim, verify_join
from licensing.fleet_boxes import FleetBoxes
from licensing.limits import Reservation, SeatLimiter
from licensing.model import Licence
from licensing.seats import IssuedKey, KeyInfo, Seat, SeatLimits, SeatStore
from licensing.trust import TrustStore, default_state_dir
from licensing.verify import EXPIRED, MISSING, LicenceStatus, expired_message, status_of
from storage.db import immediate
from storage.files import atomic_write

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class SeatContext:
    """Who is calling and under which licence state (passed to handlers and metering)."""

    seat_id: int
    name: str
    role: str
    key_id: str
    licence_state: str
    evaluation: bool
    days_left: int
    licence_id: str
    limits: SeatLimits


@dataclass(frozen=True)
class GuardStatus:
    """Everything the status endpoint, TUI header and CLI show."""

    licence: LicenceStatus
    seats_used: int
    clock_locked: str
    trusted_time: int

    @property
    def label(self) -> str:
        return "LOCKED (CLOCK)" if self.clock_locked else self.licence.label

    def to_json(self) -> dict[str, Any]:
        return {
            "licence": self.licence.to_json(),
            "label": self.label,
            "seats_used": self.seats_used,
            "seats_total": self.licence.seats,
            "clock_locked": self.clock_locked,
            "trusted_time": self.trusted_time,
        }


class LicenseGuard:
    """Licence state, seats, keys, limits, clock and audit for one data directory."""

    def __init__(
        self,
        data_dir: Path,
        db: sqlite_utils.Database,
        *,
        trusted_keys: Mapping[str, bytes] | None = None,
        tolerance: int = DEFAULT_TOLERANCE,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        facts: Callable[[], Mapping[str, str]] = collect_facts,
        key_ttl: float = 5.0,
        refresh_interval: float = 60.0,
        state_dir: Path | None = None,
        max_keys_per_seat: int = 2,
    ) -> None:
        self.data_dir = Path(data_dir)
        self._clock, self._mono = clock, monotonic
        self.key_ttl, self.refresh_interval = key_ttl, refresh_interval
        self.max_keys_per_seat = max_keys_per_seat
        self.seats = SeatStore(db, clock)
        self.seats.migrate()
        self.trust = TrustStore(Path(state_dir) if state_dir else default_state_dir(), facts, db)
        self.clock = ClockGuard(db, self.data_dir / "clock.state", tolerance, clock, monotonic,
                                trust=self.trust)
        self._clock_state: ClockState = self.clock.tick()
        self.activation = Activation(self.data_dir, trusted_keys, clock=self.trusted_now,
                                     facts=facts, trust=self.trust)
        self.audit = AuditLog.keyed(db, self.trust, clock)
        self.fleet_boxes = FleetBoxes(db)
        self.limiter = SeatLimiter(self.seats.tokens_on, clock)
        self._lock = threading.Lock()
        self._keys: dict[bytes, tuple[Seat, str, float]] = {}
        self._covered: frozenset[int] | None = None  # seat ids within the licensed count
        self.seats.add_listener(self._invalidate)
        self._installed: Installed = self.activation.installed()
        self._licence_mtime = self._mtime()
        self._last_refresh = monotonic()
        st = self.status()
        log.log(
            logging.INFO if st.label == "LICENSED" else logging.WARNING,
            "licensing: %s %s — %s", st.label, st.licence.licence_id or "-", st.licence.message,
        )  # fmt: skip

    # state ---------------------------------------------------------------------------
    def trusted_now(self) -> float:
        """Trusted time: the wall clock, or the clock's high-water mark when that is later."""
        return max(self._clock(), float(self._clock_state.high_water))

    def _mtime(self) -> float:
        try:
            return self.activation.licence_path.stat().st_mtime_ns
        except FileNotFoundError:
            return 0

    def refresh(self, force: bool = False) -> None:
        """Tick the trusted clock and re-read the licence if its file changed."""
        now = self._mono()
        if not force and now - self._last_refresh < self.refresh_interval:
            return
        with self._lock:
            self._last_refresh = now
            self._clock_state = self.clock.tick()
            mtime = self._mtime()
            if force or mtime != self._licence_mtime:
                self._installed = self.activation.installed()
                self._licence_mtime = mtime
                self._keys.clear()
                self._covered = None

    def status(self) -> GuardStatus:
        """Current licence status (re-evaluated against ``now``), seats and clock state."""
        self.refresh()
        inst = self._installed
        licence = inst.status
        if inst.verified is not None:
            licence = status_of(inst.verified.licence, int(self.trusted_now()),
                                licence.fingerprint)
        return GuardStatus(
            licence=licence,
            seats_used=self.seats.count_seats(),
            clock_locked=self._clock_state.locked,
            trusted_time=self._clock_state.high_water,
        )

    def _invalidate(self, key_id: str) -> None:
        with self._lock:
            self._covered = None
            if key_id == "seats":
                return
            if key_id == "*":
                self._keys.clear()
            else:
                self._keys = {h: v for h, v in self._keys.items() if v[1] != key_id}

    # per request ---------------------------------------------------------------------
    def authenticate(self, api_key: str) -> tuple[Seat, str]:
        """(seat, key id) for ``api_key``, cached briefly; Unauthenticated otherwise."""
        digest = hashlib.sha256((api_key or "").encode()).digest()
        now = self._mono()
        hit = self._keys.get(digest)
        if hit is not None and hit[2] > now:
            return hit[0], hit[1]
        seat, key_id = self.seats.authenticate(api_key)
        with self._lock:
            self._keys[digest] = (seat, key_id, now + self.key_ttl)
        return seat, key_id

    def check(
        self, api_key: str, model: str | None = None, feature: str | None = None
    ) -> SeatContext:
        """Authenticate and authorise one inference request (see module docstring)."""
        self.refresh()
        seat, key_id = self.authenticate(api_key)
        if self._clock_state.locked:
            raise ClockTampered(
                f"inference is locked: {self._clock_state.locked}. An admin must run "
                "'appliance-license ack-clock' or import a fresh activation"
            )
        verified = self._installed.verified
        if verified is None:
            raise LicenceMissing(self._installed.error or "no licence is installed")
        lic = verified.licence
        now = int(self.trusted_now())
        if now >= lic.grace_ends_at:
            raise LicenceExpired(lic.licence_id, expired_message(lic))
        if now < lic.valid_from:
            raise Forbidden(f"licence {lic.licence_id} is not valid yet")
        _check_entitled(lic, model, feature)
        covered = self._covered
        if covered is None:
            covered = self._covered = self.seats.first_seat_ids(lic.seats)
        if seat.id not in covered:
            raise Forbidden(
                f"seat {seat.name!r} is beyond the {lic.seats} seat(s) of licence "
                f"{lic.licence_id}; delete a seat or import a licence with more seats"
            )
        state = "valid" if now < lic.expires_at else "grace"
        days_left = max(0, -(-(lic.expires_at - now) // 86_400))
        if state == "grace":
            days_left = max(0, -(-(lic.grace_ends_at - now) // 86_400))
        return SeatContext(
            seat_id=seat.id, name=seat.name, role=seat.role, key_id=key_id,
            licence_state=state, evaluation=lic.evaluation, days_left=days_left,
            licence_id=lic.licence_id, limits=seat.limits,
        )  # fmt: skip

    def entitle(self, model: str | None = None, feature: str | None = None) -> None:
        """For a caller ``check`` already admitted: NotEntitled unless the installed licence
        covers ``model`` and ``feature`` (no second key lookup or clock refresh)."""
        verified = self._installed.verified
        if verified is None:
            raise LicenceMissing(self._installed.error or "no licence is installed")
        _check_entitled(verified.licence, model, feature)

    def check_admin(self, api_key: str) -> SeatContext:
        """Authenticate an admin; ignores licence expiry and clock locks on purpose."""
        seat, key_id = self.authenticate(api_key)
        if seat.role != "admin":
            raise Forbidden(f"seat {seat.name!r} is not an admin")
        st = self.status().licence
        return SeatContext(
            seat_id=seat.id, name=seat.name, role=seat.role, key_id=key_id,
            licence_state=st.state, evaluation=st.evaluation, days_left=st.days_left,
            licence_id=st.licence_id, limits=seat.limits,
        )  # fmt: skip

    @contextlib.contextmanager
    def slot(self, ctx: SeatContext) -> Iterator[None]:
        """Hold a concurrency slot for the request; RateLimited(retry_after) if over limits."""
        self.limiter.acquire(ctx.seat_id, ctx.name, ctx.limits)
        try:
            yield
        finally:
            self.limiter.release(ctx.seat_id)

    def reserve(self, ctx: SeatContext, need: int, optional: int = 0) -> Reservation:
        """Hold ``need`` tokens (plus what today allows of ``optional``) for one request;
        RateLimited (429) if ``need`` does not fit. Settled by ``record_usage``."""
        return self.limiter.reserve(ctx.seat_id, ctx.name, ctx.limits, need, optional)

    def record_usage(
        self, ctx: SeatContext, *, route: str, model: str, status: int,
        tokens_in: int = 0, tokens_out: int = 0, images: int = 0,
        reservations: tuple[Reservation, ...] = (), box: str = "",
    ) -> None:  # fmt: skip
        """Meter one finished request for the caller's seat, settling its reservations;
        ``box`` names the box that served it."""
        ts = self._clock()
        used = tokens_in + tokens_out
        for res in reservations:
            self.limiter.settle(res, used, ts)
            used = 0  # the real count is accounted once
        if not reservations:
            self.limiter.add_tokens(ctx.seat_id, used, ts)
        self.seats.record_usage(
            ctx.seat_id, route=route, model=model, status=status, tokens_in=tokens_in,
            tokens_out=tokens_out, images=images, ts=ts, box=box,
        )  # fmt: skip

    # fleet ---------------------------------------------------------------------------
    def admit_box(self, join_request: bytes) -> tuple[JoinClaim, Admission]:
        """Let the box that signed ``join_request`` join this head's fleet, if the licence
        lists it or has a place left (then it is bound); audited. BoxNotLicensed (403)
        naming why not; FormatError/SignatureError for a malformed or forged request."""
        self.refresh()
        verified = self._installed.verified
        if verified is None:
            raise BoxNotLicensed("the head has no licence: "
                                 + (self._installed.error or "import a fleet licence"))
        lic = verified.licence
        if not self.status().licence.serves_inference:
            raise BoxNotLicensed(f"the head's licence {lic.licence_id} is not valid now")
        now = int(self.trusted_now())
        claim = verify_join(join_request, now)
        try:
            admission = self.fleet_boxes.admit(lic, claim, now)
        except BoxNotLicensed as exc:
            self.audit.append(f"box:{claim.box}", "fleet.join_refused", {"reason": str(exc)})
            raise
        self.audit.append(f"box:{claim.box}", "fleet.join",
                          {"licence_id": lic.licence_id, "how": admission.how,
                           "fingerprint": admission.fingerprint.describe()})
        return claim, admission

    # admin ---------------------------------------------------------------------------
    def seat_capacity(self) -> int:
        verified = self._installed.verified
        return verified.licence.seats if verified is not None else 0

    def create_seat(
        self, actor: str, name: str, contact: str = "", role: str = "user",
        limits: SeatLimits | None = None,
    ) -> Seat:  # fmt: skip
        with immediate(self.seats.db):  # the seat and its audit row commit together
            seat = self.seats.create_seat(name, contact, role, limits,
                                          max_seats=self.seat_capacity())
            self.audit.append(actor, "seat.create",
                              {"seat_id": seat.id, "name": name, "role": role,
                               "egress": seat.limits.egress})
        return seat

    def delete_seat(self, actor: str, seat_id: int) -> None:
        self.seats.delete_seat(seat_id)
        self.audit.append(actor, "seat.delete", {"seat_id": seat_id})

    def set_limits(self, actor: str, seat_id: int, limits: SeatLimits) -> Seat:
        """Change a seat's limits; a change of its egress policy (what may leave the box)
        gets an audit row of its own, ``seat.egress``, saying from what to what."""
        with immediate(self.seats.db):  # the change and its audit rows commit together
            before = self.seats.get_seat(seat_id).limits.egress
            seat = self.seats.set_limits(seat_id, limits)
            self.audit.append(actor, "seat.limits", {"seat_id": seat_id, **seat.to_json()})
            if seat.limits.egress != before:
                self.audit.append(actor, "seat.egress",
                                  {"seat_id": seat_id, "name": seat.name, "from": before,
                                   "to": seat.limits.egress})
        return seat

    def issue_key(self, actor: str, seat_id: int) -> IssuedKey:
        with immediate(self.seats.db):  # never a usable key without its audit row
            issued = self.seats.issue_key(seat_id, self.max_keys_per_seat)
            self.audit.append(actor, "key.issue",
                              {"seat_id": seat_id, "key_id": issued.info.key_id})
        return issued

    def revoke_key(self, actor: str, key_id: str) -> KeyInfo:
        info = self.seats.revoke_key(key_id)
        self.audit.append(actor, "key.revoke", {"seat_id": info.seat_id, "key_id": key_id})
        return info

    def rotate_key(self, actor: str, key_id: str) -> IssuedKey:
        with immediate(self.seats.db):  # never a usable key without its audit row
            issued = self.seats.rotate_key(key_id, self.max_keys_per_seat)
            self.audit.append(actor, "key.rotate",
                              {"old_key_id": key_id, "key_id": issued.info.key_id})
        return issued

    def import_licence(self, actor: str, data: bytes) -> GuardStatus:
        """Verify and install an activation. Only a licence newer than any installed before
        clears a clock lock; trusted time never moves back, and re-importing the same or an
        older activation resets nothing."""
        before = self.trust.load().newest
        verified = self.activation.install(data)
        lic = verified.licence
        if lic.order > before:
            self.clock.acknowledge("fresh activation")
        self.audit.append(
            actor, "licence.import",
            {"licence_id": lic.licence_id, "customer": lic.customer, "seats": lic.seats,
             "expires_at": lic.expires_at, "evaluation": lic.evaluation},
        )  # fmt: skip
        self.refresh(force=True)
        return self.status()

    def acknowledge_clock(self, actor: str) -> GuardStatus:
        """Admin accepts the current clock; unlocks inference and records why it was locked."""
        reason = self.clock.state().locked if self.clock.state() else ""
        self.clock.acknowledge()
        self.audit.append(actor, "clock.acknowledge", {"was_locked": reason})
        self.refresh(force=True)
        return self.status()

    def deactivate(self, actor: str) -> bytes:
        lic = self._installed.verified
        receipt = self.activation.deactivate()
        self.audit.append(
            actor, "licence.deactivate", {"licence_id": lic.licence.licence_id if lic else ""}
        )
        self.refresh(force=True)
        return receipt


def _check_entitled(lic: Licence, model: str | None, feature: str | None) -> None:
    if model is not None and not lic.entitlements.allows_model(model):
        raise NotEntitled(f"licence {lic.licence_id} does not cover model {model!r}")
    if feature is not None and not lic.entitlements.allows_feature(feature):
        raise NotEntitled(f"licence {lic.licence_id} does not include feature {feature!r}")


def bootstrap_evaluation(
    data_dir: Path, db: sqlite_utils.Database, **guard_kwargs: Any
) -> Path | None:
    """First start without a licence: create the evaluation licence and an admin seat.

    With no licence installed and no evaluation ever started here, installs an EVALUATION
    licence (3 seats, 30 days). If the box has no seats yet and a usable licence, creates
    seat ``admin`` and writes its API key to ``data_dir/admin.key`` (0600). Returns that
    path when it was written by this call, else ``None``.
    """
    guard = LicenseGuard(data_dir, db, **guard_kwargs)
    status = guard.status().licence
    if status.state == MISSING and not guard.activation.evaluation_used():
        verified = guard.activation.create_evaluation()
        guard.audit.append(
            "system", "licence.evaluation",
            {"licence_id": verified.licence.licence_id, "expires_at": verified.licence.expires_at},
        )  # fmt: skip
        guard.refresh(force=True)
        status = guard.status().licence
    if guard.seats.count_seats() or status.state in (MISSING, EXPIRED):
        return None
    seat = guard.create_seat("system", "admin", "", "admin")
    issued = guard.issue_key("system", seat.id)
    path = Path(data_dir) / "admin.key"
    atomic_write(path, (issued.secret + "\n").encode(), mode=0o600)
    log.warning("licensing: created admin seat; its API key is in %s (mode 0600)", path)
    return path

"""Seats, their API keys and usage metering, over the box's ``sqlite_utils.Database``.

API keys look like ``sk-box-<12 hex key id>.<43 url-safe chars>``. Only the key id (for
lookup and display), a random per-key salt and ``HMAC-SHA256(salt, key)`` are stored; the
full key is returned once by ``issue_key``/``rotate_key`` and never again. Lookup is by
key id, then a constant-time compare of the HMAC. Revocation takes effect at once for
every ``LicenseGuard`` registered through ``add_listener`` on the same store.

Usage queries take a ``seat_id`` and only ever return that seat's rows; the
all-seats export is a separate, explicitly admin-only function.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlite_utils

from licensing import schema
from licensing.errors import (
    InvalidInput,
    KeyLimitReached,
    NotFound,
    SeatLimitReached,
    Unauthenticated,
)
from storage.db import immediate

log = logging.getLogger(__name__)

KEY_PREFIX = "sk-box-"
KEY_RE = re.compile(r"^sk-box-([0-9a-f]{12})\.([A-Za-z0-9_-]{43})$")
ROLES = ("user", "admin")
NAME_RE = re.compile(r"^[\w.@ -]{1,64}$")


PRIORITIES = ("interactive", "batch")
#: which of a seat's requests may be served by a remote endpoint (cloud overflow): none,
#: language-model requests without images, or those with images as well
EGRESS = ("none", "llm", "llm+vision")


@dataclass(frozen=True)
class SeatLimits:
    """Per-seat limits; 0 means unlimited. ``share`` weighs the seat in the LLM queue
    (a seat with share 2 gets twice the slots of a seat with 1 when both wait);
    ``priority`` "batch" is served only when interactive seats leave room; ``egress``
    says which of its requests may overflow to a remote endpoint (``EGRESS``)."""

    max_concurrent: int = 4
    requests_per_minute: int = 60
    tokens_per_day: int = 1_000_000
    share: int = 1
    priority: str = "interactive"
    egress: str = "none"

    def __post_init__(self) -> None:
        for name in ("max_concurrent", "requests_per_minute", "tokens_per_day"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InvalidInput(f"{name} must be a non-negative integer")
        if not isinstance(self.share, int) or isinstance(self.share, bool) or not (
                1 <= self.share <= 100):
            raise InvalidInput("share must be an integer from 1 to 100")
        if self.priority not in PRIORITIES:
            raise InvalidInput(f"priority must be one of {', '.join(PRIORITIES)}")
        if self.egress not in EGRESS:
            raise InvalidInput(f"egress must be one of {', '.join(EGRESS)}")


@dataclass(frozen=True)
class Seat:
    """A named user or admin of the box."""

    id: int
    name: str
    contact: str
    role: str
    limits: SeatLimits
    created_at: int

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.name, "contact": self.contact, "role": self.role,
            "max_concurrent": self.limits.max_concurrent,
            "requests_per_minute": self.limits.requests_per_minute,
            "tokens_per_day": self.limits.tokens_per_day, "share": self.limits.share,
            "priority": self.limits.priority, "egress": self.limits.egress,
            "created_at": self.created_at,
        }  # fmt: skip


@dataclass(frozen=True)
class KeyInfo:
    """What may be shown about a stored key (never the key itself)."""

    key_id: str
    seat_id: int
    prefix: str
    created_at: int
    revoked_at: int | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True)
class IssuedKey:
    """A freshly created key; ``secret`` is the full key, shown to the admin once."""

    info: KeyInfo
    secret: str = ""

    def __repr__(self) -> str:  # keep the secret out of logs and tracebacks
        return f"IssuedKey(info={self.info!r}, secret='***')"


@dataclass(frozen=True)
class UsageTotal:
    """Totals for one seat over one day ('2026-11-22') or month ('2026-11')."""

    period: str
    requests: int
    errors: int
    tokens_in: int
    tokens_out: int
    images: int


def _hash(salt: str, key: str) -> str:
    return hmac.new(bytes.fromhex(salt), key.encode(), hashlib.sha256).hexdigest()


def utc_day(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


SEAT_COLS = (
    "id, name, contact, role, max_concurrent, requests_per_minute, tokens_per_day, created_at,"
    " share, priority, egress"
)
USAGE_COLS = ("ts", "day", "route", "model", "status", "tokens_in", "tokens_out", "images",
              "box")


def _seat(row: Iterable[Any]) -> Seat:
    r = list(row)
    return Seat(r[0], r[1], r[2], r[3], SeatLimits(r[4], r[5], r[6], r[8], r[9], r[10]), r[7])


class SeatStore:
    """Seats, keys and usage. Thread-safe; every write is one IMMEDIATE transaction."""

    def __init__(self, db: sqlite_utils.Database, clock: Callable[[], float] = time.time) -> None:
        self.db, self._clock = db, clock
        self._listeners: list[Callable[[str], None]] = []

    def migrate(self) -> int:
        """Create or upgrade the licensing tables; return the schema version."""
        return schema.migrate(self.db)

    def add_listener(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(what)`` on changes: a key id (revoked), ``"seats"`` (a seat was
        added) or ``"*"`` (seats or limits changed: drop everything cached)."""
        self._listeners.append(callback)

    def _changed(self, key_id: str) -> None:
        for callback in self._listeners:
            callback(key_id)

    # seats ---------------------------------------------------------------------------
    def create_seat(
        self,
        name: str,
        contact: str = "",
        role: str = "user",
        limits: SeatLimits | None = None,
        *,
        max_seats: int,
    ) -> Seat:
        """Add a seat; SeatLimitReached when ``max_seats`` (the licence's count) are in use."""
        name = name.strip()
        if not NAME_RE.match(name):
            raise InvalidInput("seat name must be 1-64 letters, digits, spaces or . @ _ -")
        if role not in ROLES:
            raise InvalidInput(f"role must be one of {', '.join(ROLES)}")
        if len(contact) > 256:
            raise InvalidInput("contact is longer than 256 characters")
        limits = limits or SeatLimits()
        with immediate(self.db):
            used = self.count_seats()
            if used >= max_seats:
                raise SeatLimitReached(
                    f"the licence allows {max_seats} seat(s) and {used} are in use; "
                    "delete a seat or import a licence with more seats"
                )
            if self.db.execute("SELECT 1 FROM seats WHERE name = ?", [name]).fetchone():
                raise InvalidInput(f"a seat named {name!r} already exists")
            cur = self.db.execute(
                "INSERT INTO seats (name, contact, role, max_concurrent, requests_per_minute,"
                " tokens_per_day, created_at, share, priority, egress)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [name, contact, role, limits.max_concurrent, limits.requests_per_minute,
                 limits.tokens_per_day, int(self._clock()), limits.share, limits.priority,
                 limits.egress],
            )  # fmt: skip
            seat_id = int(cur.lastrowid)
        log.info("seat %d (%s, %s) created", seat_id, name, role)
        self._changed("seats")
        return self.get_seat(seat_id)

    def first_seat_ids(self, n: int) -> frozenset[int]:
        """Ids of the ``n`` oldest seats: those covered when a licence has fewer seats."""
        rows = self.db.execute("SELECT id FROM seats ORDER BY id LIMIT ?", [max(0, n)])
        return frozenset(r[0] for r in rows)

    def count_seats(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM seats").fetchone()[0])

    def get_seat(self, seat_id: int) -> Seat:
        row = self.db.execute(f"SELECT {SEAT_COLS} FROM seats WHERE id = ?", [seat_id]).fetchone()
        if row is None:
            raise NotFound(f"no seat with id {seat_id}")
        return _seat(row)

    def list_seats(self) -> list[Seat]:
        return [_seat(r) for r in self.db.execute(f"SELECT {SEAT_COLS} FROM seats ORDER BY id")]

    def set_limits(self, seat_id: int, limits: SeatLimits) -> Seat:
        with immediate(self.db):
            self.get_seat(seat_id)
            self.db.execute(
                "UPDATE seats SET max_concurrent = ?, requests_per_minute = ?, tokens_per_day = ?,"
                " share = ?, priority = ?, egress = ? WHERE id = ?",
                [limits.max_concurrent, limits.requests_per_minute, limits.tokens_per_day,
                 limits.share, limits.priority, limits.egress, seat_id],
            )
        self._changed("*")
        return self.get_seat(seat_id)

    def delete_seat(self, seat_id: int) -> None:
        """Remove a seat and its keys (usage rows stay for the records); frees the slot."""
        with immediate(self.db):
            self.get_seat(seat_id)
            self.db.execute("DELETE FROM api_keys WHERE seat_id = ?", [seat_id])
            self.db.execute("DELETE FROM seats WHERE id = ?", [seat_id])
        log.info("seat %d deleted", seat_id)
        self._changed("*")

    # keys ----------------------------------------------------------------------------
    def issue_key(self, seat_id: int, max_keys: int = 0) -> IssuedKey:
        """Create a key for ``seat_id``; the returned ``secret`` is never stored.

        KeyLimitReached when the seat already holds ``max_keys`` active keys (0: no limit)."""
        key_id = secrets.token_hex(6)
        secret = f"{KEY_PREFIX}{key_id}.{secrets.token_urlsafe(32)}"
        salt = secrets.token_hex(16)
        now = int(self._clock())
        with immediate(self.db):
            self.get_seat(seat_id)
            active = self.db.execute(
                "SELECT COUNT(*) FROM api_keys WHERE seat_id = ? AND revoked_at IS NULL",
                [seat_id]).fetchone()[0]
            if max_keys and active >= max_keys:
                raise KeyLimitReached(
                    f"seat {seat_id} already holds {active} active API key(s); the limit is "
                    f"{max_keys} per seat (max_keys_per_seat), so a seat stays one person. "
                    "Revoke or rotate a key instead")
            self.db.execute(
                "INSERT INTO api_keys (id, seat_id, prefix, salt, hash, created_at, revoked_at)"
                " VALUES (?, ?, ?, ?, ?, ?, NULL)",
                [key_id, seat_id, KEY_PREFIX + key_id, salt, _hash(salt, secret), now],
            )
        log.info("api key %s issued for seat %d", key_id, seat_id)
        return IssuedKey(KeyInfo(key_id, seat_id, KEY_PREFIX + key_id, now, None), secret)

    def get_key(self, key_id: str) -> KeyInfo:
        row = self.db.execute(
            "SELECT id, seat_id, prefix, created_at, revoked_at FROM api_keys WHERE id = ?",
            [key_id],
        ).fetchone()
        if row is None:
            raise NotFound(f"no API key with id {key_id!r}")
        return KeyInfo(*row)

    def list_keys(self, seat_id: int) -> list[KeyInfo]:
        rows = self.db.execute(
            "SELECT id, seat_id, prefix, created_at, revoked_at FROM api_keys"
            " WHERE seat_id = ? ORDER BY created_at, rowid",
            [seat_id],
        )
        return [KeyInfo(*r) for r in rows]

    def revoke_key(self, key_id: str) -> KeyInfo:
        """Revoke at once; idempotent."""
        with immediate(self.db):
            info = self.get_key(key_id)
            if info.revoked_at is None:
                self.db.execute(
                    "UPDATE api_keys SET revoked_at = ? WHERE id = ?", [int(self._clock()), key_id]
                )
        self._changed(key_id)
        log.info("api key %s revoked", key_id)
        return self.get_key(key_id)

    def rotate_key(self, key_id: str, max_keys: int = 0) -> IssuedKey:
        """Revoke ``key_id`` and issue a new key for the same seat."""
        with immediate(self.db):
            info = self.revoke_key(key_id)
            return self.issue_key(info.seat_id, max_keys)

    def authenticate(self, api_key: str) -> tuple[Seat, str]:
        """(seat, key id) for a valid, unrevoked key; Unauthenticated otherwise."""
        m = KEY_RE.match(api_key or "")
        if not m:
            raise Unauthenticated("missing or malformed API key")
        row = self.db.execute(
            "SELECT seat_id, salt, hash, revoked_at FROM api_keys WHERE id = ?", [m.group(1)]
        ).fetchone()
        # Compare even for an unknown id so timing does not reveal which ids exist.
        salt, stored = (row[1], row[2]) if row else ("00" * 16, "0" * 64)
        ok = hmac.compare_digest(_hash(salt, api_key), stored)
        if row is None or not ok:
            raise Unauthenticated("invalid API key")
        if row[3] is not None:
            raise Unauthenticated("this API key has been revoked")
        return self.get_seat(row[0]), m.group(1)

    # usage ---------------------------------------------------------------------------
    def record_usage(
        self,
        seat_id: int,
        *,
        route: str,
        model: str,
        status: int,
        tokens_in: int = 0,
        tokens_out: int = 0,
        images: int = 0,
        ts: float | None = None,
        box: str = "",
    ) -> None:
        """Meter one request for ``seat_id``, served on ``box`` (the fleet box's name)."""
        ts = self._clock() if ts is None else ts
        day = utc_day(ts)
        route, model, box = route[:200], model[:200], box[:200]
        with immediate(self.db):
            self.db.execute(
                "INSERT INTO usage (seat_id, ts, day, month, route, model, status, tokens_in,"
                " tokens_out, images, box) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [seat_id, int(ts), day, day[:7], route, model, int(status), int(tokens_in),
                 int(tokens_out), int(images), box],
            )  # fmt: skip

    def tokens_on(self, seat_id: int, day: str) -> int:
        """Tokens in + out used by ``seat_id`` on UTC ``day``."""
        row = self.db.execute(
            "SELECT COALESCE(SUM(tokens_in + tokens_out), 0) FROM usage"
            " WHERE seat_id = ? AND day = ?",
            [seat_id, day],
        ).fetchone()
        return int(row[0])

    def usage_totals(self, seat_id: int, period: str = "day", limit: int = 366) -> list[UsageTotal]:
        """Totals per day or month for one seat only, newest first."""
        if period not in ("day", "month"):
            raise InvalidInput("period must be 'day' or 'month'")
        rows = self.db.execute(
            f"SELECT {period}, COUNT(*), SUM(status >= 400), SUM(tokens_in), SUM(tokens_out),"
            f" SUM(images) FROM usage WHERE seat_id = ? GROUP BY {period}"
            f" ORDER BY {period} DESC LIMIT ?",
            [seat_id, limit],
        )
        return [UsageTotal(r[0], r[1], r[2] or 0, r[3] or 0, r[4] or 0, r[5] or 0) for r in rows]

    def usage_rows(self, seat_id: int, since: float = 0, until: float | None = None) -> list[dict]:
        """Raw usage rows of one seat in [since, until)."""
        until = self._clock() + 1 if until is None else until
        cur = self.db.execute(
            f"SELECT {', '.join(USAGE_COLS)} FROM usage WHERE seat_id = ? AND ts >= ? AND ts < ?"
            " ORDER BY ts, id",
            [seat_id, int(since), int(until)],
        )
        return [dict(zip(USAGE_COLS, r, strict=True)) for r in cur]

    def usage_csv(self, seat_id: int, since: float = 0, until: float | None = None) -> str:
        """CSV of one seat's usage rows."""
        return _csv(self.usage_rows(seat_id, since, until), USAGE_COLS)

    def usage_csv_all_seats(self, since: float = 0, until: float | None = None) -> str:
        """CSV of every seat's usage (admin only: the caller must check the role)."""
        until = self._clock() + 1 if until is None else until
        cols = ("seat_id", *USAGE_COLS)
        cur = self.db.execute(
            f"SELECT {', '.join(cols)} FROM usage WHERE ts >= ? AND ts < ? ORDER BY ts, id",
            [int(since), int(until)],
        )
        return _csv([dict(zip(cols, r, strict=True)) for r in cur], cols)


def _cell(value: Any) -> Any:
    """Neutralise spreadsheet formulas in text cells (CSV injection)."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _csv(rows: list[dict], cols: tuple[str, ...]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(cols), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: _cell(v) for k, v in row.items()} for row in rows)
    return buf.getvalue()

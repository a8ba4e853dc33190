"""Append-only, keyed hash chain of admin actions (shared with firmware updates).

Each row stores ``hash = HMAC-SHA256(key, prev_hash + canonical_json(row))`` where ``row``
is ``{id, ts, actor, action, details, prev_hash}``; the first row's ``prev_hash`` is 64
zeros. The key is held apart from the database (``audit.key`` in the trusted state
directory, see ``licensing.trust``), so whoever can write the database cannot recompute the
links after deleting or editing a row. After every append the head ``(id, hash)`` is
mirrored in the trusted record outside the database; ``verify()`` recomputes the chain and
compares it with that mirror, so a rewritten or truncated tail is found too.

Without a key (``key=None``: tests of the chain logic only) the links are plain SHA-256.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import sqlite_utils

from licensing import crypto, schema
from licensing.errors import InvalidInput
from licensing.trust import TrustStore
from storage.db import after_commit, immediate, locked

GENESIS = "0" * 64
MAX_DETAILS = 16 * 1024


@dataclass(frozen=True)
class AuditRow:
    """One audit entry."""

    id: int
    ts: int
    actor: str
    action: str
    details: dict[str, Any]
    prev_hash: str
    hash: str

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "ts": self.ts, "actor": self.actor, "action": self.action,
            "details": self.details, "prev_hash": self.prev_hash, "hash": self.hash,
        }  # fmt: skip


@dataclass(frozen=True)
class ChainReport:
    """Outcome of ``AuditLog.verify``; ``bad_id`` is the first row that fails."""

    ok: bool
    rows: int
    bad_id: int | None = None
    reason: str = ""


def row_hash(
    prev_hash: str, row_id: int, ts: int, actor: str, action: str, details: Any,
    key: bytes | None = None,
) -> str:  # fmt: skip
    body = {
        "id": row_id, "ts": ts, "actor": actor, "action": action, "details": details,
        "prev_hash": prev_hash,
    }  # fmt: skip
    message = prev_hash.encode() + crypto.canonical_json(body)
    if key is None:
        return hashlib.sha256(message).hexdigest()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


class AuditLog:
    """``AuditLog(db, key=..., trust=...).append(actor, action, details)``; ``verify()``."""

    def __init__(
        self, db: sqlite_utils.Database, clock: Callable[[], float] = time.time, *,
        key: bytes | None = None, trust: TrustStore | None = None,
    ) -> None:  # fmt: skip
        self.db, self._clock, self._key, self._trust = db, clock, key, trust
        schema.migrate(db)

    @classmethod
    def keyed(cls, db: sqlite_utils.Database, trust: TrustStore,
              clock: Callable[[], float] = time.time) -> AuditLog:
        """The box's audit log: key and head mirror from the trusted state directory."""
        return cls(db, clock, key=trust.audit_key(), trust=trust)

    def append(self, actor: str, action: str, details: dict[str, Any] | None = None) -> AuditRow:
        """Add a row chained to the last one; ``details`` must be JSON-serialisable."""
        if not actor or not action or len(actor) > 128 or len(action) > 128:
            raise InvalidInput("audit actor and action must be 1..128 characters")
        details = dict(details or {})
        try:
            text = crypto.canonical_json(details).decode()
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"audit details are not JSON-serialisable: {exc}") from exc
        if len(text) > MAX_DETAILS:
            raise InvalidInput(f"audit details exceed {MAX_DETAILS} bytes")
        details = json.loads(text)  # exactly what is hashed and stored
        ts = int(self._clock())
        with immediate(self.db):
            last = self.db.execute(
                "SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1"
            ).fetchone()
            row_id, prev = (last[0] + 1, last[1]) if last else (1, GENESIS)
            digest = row_hash(prev, row_id, ts, actor, action, details, self._key)
            self.db.execute(
                "INSERT INTO audit_log (id, ts, actor, action, details, prev_hash, hash) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [row_id, ts, actor, action, text, prev, digest],
            )
        if self._trust is not None:  # after commit: the mirror never runs ahead of the rows
            trust, head = self._trust, (row_id, digest)
            # inside a caller's transaction (a key and its audit row commit together) the
            # row is not committed when the ``with`` above ends: a crash before the
            # caller's commit would leave the mirror ahead of the rows, read as deletion
            after_commit(self.db, lambda: trust.update(
                lambda r: r if r.audit_head[0] >= head[0] else replace(r, audit_head=head)))
        return AuditRow(row_id, ts, actor, action, details, prev, digest)

    def _rows(self, sql: str, params: list[Any]) -> Iterator[AuditRow]:
        for r in self.db.execute(sql, params).fetchall():
            try:
                details = json.loads(r[4])
            except ValueError:
                details = {"_unparseable": r[4]}
            yield AuditRow(r[0], r[1], r[2], r[3], details, r[5], r[6])

    def verify(self) -> ChainReport:
        """Recompute every link; report the first edited, deleted or re-ordered row."""
        prev, expected_id, count = GENESIS, 1, 0
        with locked(self.db):  # the mirrored head and the rows as one append left them
            anchor = self._trust.load().audit_head if self._trust is not None else (0, GENESIS)
            rows = self.db.execute(
                "SELECT id, ts, actor, action, details, prev_hash, hash FROM audit_log "
                "ORDER BY id").fetchall()
        for row_id, ts, actor, action, text, prev_hash, digest in rows:
            count += 1
            if row_id != expected_id:
                return ChainReport(False, count, row_id, f"row(s) before id {row_id} deleted")
            if prev_hash != prev:
                return ChainReport(False, count, row_id, "link to the previous row is broken")
            try:
                details = json.loads(text)
            except ValueError:
                return ChainReport(False, count, row_id, "details are not valid JSON")
            if row_hash(prev, row_id, ts, actor, action, details, self._key) != digest:
                return ChainReport(False, count, row_id, "row content does not match its hash")
            if row_id == anchor[0] and not hmac.compare_digest(digest, anchor[1]):
                return ChainReport(False, count, row_id,
                                   "row differs from the head mirrored outside the database")
            prev, expected_id = digest, row_id + 1
        if anchor[0] >= expected_id:
            return ChainReport(False, count, expected_id,
                               f"rows {expected_id}..{anchor[0]} are missing (the mirrored "
                               "head is further than the database)")
        return ChainReport(True, count)

    verify_chain = verify

    def head(self) -> tuple[int, str]:
        """(id, hash) of the last row, to anchor outside the database; (0, GENESIS) if empty."""
        last = self.db.execute("SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1").fetchone()
        return (last[0], last[1]) if last else (0, GENESIS)

    def tail(
        self, n: int = 50, *, actor: str | None = None, action: str | None = None
    ) -> list[AuditRow]:
        """The last ``n`` rows (oldest first), optionally only one actor or action prefix."""
        where, params = [], []
        if actor:
            where.append("actor = ?")
            params.append(actor)
        if action:
            where.append("action LIKE ? ESCAPE '\\'")
            params.append(
                action.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            )
        sql = "SELECT id, ts, actor, action, details, prev_hash, hash FROM audit_log"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ?"
        params.append(max(0, min(int(n), 10_000)))
        return list(reversed(list(self._rows(sql, params))))

"""Append-only, hash-chained audit log of admin actions (shared with firmware updates).

Each row stores ``hash = sha256(prev_hash + canonical_json(row))`` where ``row`` is
``{id, ts, actor, action, details, prev_hash}``; the first row's ``prev_hash`` is 64 zeros.
``verify()`` recomputes the chain and finds an edited row, a deleted row in the middle
(broken link or an id gap) or a re-ordered row. Deleting rows at the *end* leaves a valid
shorter chain: to catch that, compare ``head()`` with a copy kept elsewhere (logs, a
deactivation receipt, a monitoring system); nothing inside one database can prove its own
tail was not cut.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import sqlite_utils

from licensing import crypto, schema
from licensing.errors import InvalidInput
from licensing.storage import immediate

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


def row_hash(prev_hash: str, row_id: int, ts: int, actor: str, action: str, details: Any) -> str:
    body = {
        "id": row_id, "ts": ts, "actor": actor, "action": action, "details": details,
        "prev_hash": prev_hash,
    }  # fmt: skip
    return hashlib.sha256(prev_hash.encode() + crypto.canonical_json(body)).hexdigest()


class AuditLog:
    """``AuditLog(db).append(actor, action, details)``; ``verify()``; ``tail(n, ...)``."""

    def __init__(self, db: sqlite_utils.Database, clock: Callable[[], float] = time.time) -> None:
        self.db, self._clock = db, clock
        schema.migrate(db)

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
            digest = row_hash(prev, row_id, ts, actor, action, details)
            self.db.execute(
                "INSERT INTO audit_log (id, ts, actor, action, details, prev_hash, hash) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [row_id, ts, actor, action, text, prev, digest],
            )
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
        cur = self.db.execute(
            "SELECT id, ts, actor, action, details, prev_hash, hash FROM audit_log ORDER BY id"
        )
        for row_id, ts, actor, action, text, prev_hash, digest in cur:
            count += 1
            if row_id != expected_id:
                return ChainReport(False, count, row_id, f"row(s) before id {row_id} deleted")
            if prev_hash != prev:
                return ChainReport(False, count, row_id, "link to the previous row is broken")
            try:
                details = json.loads(text)
            except ValueError:
                return ChainReport(False, count, row_id, "details are not valid JSON")
            if row_hash(prev, row_id, ts, actor, action, details) != digest:
                return ChainReport(False, count, row_id, "row content does not match its hash")
            prev, expected_id = digest, row_id + 1
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

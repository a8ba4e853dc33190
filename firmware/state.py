"""Update history and anti-rollback versions in the box's SQLite database.

Tables (created and migrated here, in ``<data_dir>/appliance.db``):

- ``update_history``: id, bundle_version, type, bundle, key_id, started, finished, outcome,
  reason, step. ``outcome`` is NULL while an apply runs; ``success``, ``rolled-back``,
  ``failed``, ``interrupted`` or ``rollback`` (a manual rollback) afterwards.
- ``update_versions``: per bundle type, the installed version and the floor (the highest
  version ever committed; anti-rollback refuses bundles below it unless a signed downgrade).

Reads for verification open the file read-only and never create it, so a refused bundle
leaves the disk untouched.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlite_utils

from firmware.bundle import parse_version
from firmware.errors import UpdateError
from storage.db import Step, migrate, open_db

HISTORY = "update_history"
VERSIONS = "update_versions"
HISTORY_COLUMNS: dict[str, type] = {
    "id": int, "bundle_version": str, "type": str, "bundle": str, "key_id": str,
    "started": str, "finished": str, "outcome": str, "reason": str, "step": str,
}


def _v1(db: sqlite_utils.Database) -> None:
    """The two tables; a database from before this scheme may lack newer history columns."""
    columns = ", ".join(f"{n} {'INTEGER PRIMARY KEY' if n == 'id' else 'TEXT'}"
                        for n in HISTORY_COLUMNS)
    db.execute(f"CREATE TABLE IF NOT EXISTS {HISTORY} ({columns})")
    have = {row[1] for row in db.execute(f"PRAGMA table_info({HISTORY})").fetchall()}
    for name in HISTORY_COLUMNS:
        if name not in have:
            db.execute(f"ALTER TABLE {HISTORY} ADD COLUMN {name} TEXT")
    db.execute(f"CREATE TABLE IF NOT EXISTS {VERSIONS} (type TEXT PRIMARY KEY, installed TEXT,"
               " floor TEXT, updated TEXT)")


MIGRATIONS: list[Step] = [_v1]


def utcnow() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class HistoryEntry:
    """One row of ``update_history``."""

    id: int
    bundle_version: str
    type: str
    bundle: str | None
    key_id: str | None
    started: str
    finished: str | None
    outcome: str | None
    reason: str | None
    step: str | None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class UpdateState:
    """History and versions; one short connection per call (crash-safe, no singletons)."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = Path(db_path)

    def _db(self) -> sqlite_utils.Database:
        db = open_db(self.db_path)
        migrate(db, "firmware", MIGRATIONS)
        return db

    def _read(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        """A query that never creates the database; [] when it or the table is missing.

        Opened read-write but only read: a read-only connection would leave ``-wal``/
        ``-shm`` files behind on a WAL database. Any other error fails closed (raises),
        so anti-rollback never runs on versions it could not read.
        """
        if not self.db_path.is_file():
            return []
        try:
            conn = sqlite3.connect(f"file:{self.db_path}?mode=rw", uri=True)
        except sqlite3.Error as exc:
            raise UpdateError(f"cannot open {self.db_path}: {exc}") from exc
        conn.row_factory = sqlite3.Row
        try:
            return conn.execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []
            raise UpdateError(f"cannot read update state from {self.db_path}: {exc}") from exc
        finally:
            conn.close()

    # --- versions -----------------------------------------------------------------
    def versions(self) -> tuple[dict[str, str], dict[str, str]]:
        """(installed, floors) per bundle type."""
        rows = self._read(f"select type, installed, floor from {VERSIONS}")
        return ({r["type"]: r["installed"] for r in rows if r["installed"]},
                {r["type"]: r["floor"] for r in rows if r["floor"]})

    def set_installed(self, bundle_type: str, version: str, raise_floor: bool = True) -> None:
        db = self._db()
        with db.conn:
            row = db.execute(f"select floor from {VERSIONS} where type = ?",
                             [bundle_type]).fetchone()
            floor = row[0] if row else None
            if raise_floor and (not floor or parse_version(version) > parse_version(floor)):
                floor = version
            db.table(VERSIONS).upsert({"type": bundle_type, "installed": version,
                                       "floor": floor, "updated": utcnow()}, pk="type")
        db.close()

    # --- history ------------------------------------------------------------------
    def start(self, bundle_type: str, version: str, bundle: str | None,
              key_id: str | None, step: str = "start") -> int:
        db = self._db()
        with db.conn:
            table = db.table(HISTORY)
            table.insert({"bundle_version": version, "type": bundle_type, "bundle": bundle,
                          "key_id": key_id, "started": utcnow(), "step": step})
            row_id = table.last_pk
        db.close()
        return int(row_id)

    def step(self, row_id: int, step: str) -> None:
        self._update(row_id, {"step": step})

    def finish(self, row_id: int, outcome: str, reason: str = "") -> None:
        self._update(row_id, {"finished": utcnow(), "outcome": outcome, "reason": reason})

    def _update(self, row_id: int, values: dict[str, Any]) -> None:
        db = self._db()
        with db.conn:
            db.table(HISTORY).update(row_id, values)
        db.close()

    def history(self, limit: int = 50) -> list[HistoryEntry]:
        rows = self._read(f"select {', '.join(HISTORY_COLUMNS)} from {HISTORY} "
                          "order by id desc limit ?", (limit,))
        return [HistoryEntry(**dict(r)) for r in rows]

    def unfinished(self) -> list[HistoryEntry]:
        rows = self._read(f"select {', '.join(HISTORY_COLUMNS)} from {HISTORY} "
                          "where outcome is null order by id")
        return [HistoryEntry(**dict(r)) for r in rows]

"""The box's embedded SQLite database (one file, WAL) and its versioned migrations.

Other packages (licensing, firmware) own their tables and migrate them themselves on the
same ``sqlite_utils.Database``; this module owns the connection.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import sqlite_utils

log = logging.getLogger(__name__)


def _v1(db: sqlite_utils.Database) -> None:
    db["request_log"].create(
        {"id": int, "ts": float, "route": str, "model": str, "status": int,
         "prompt_tokens": int, "completion_tokens": int, "latency_ms": float, "seat_id": int},
        pk="id", not_null={"ts", "route", "status"},
    )
    db["request_log"].create_index(["ts"])


def _v2(db: sqlite_utils.Database) -> None:
    # Every request is metered once, in licensing's ``usage`` table; the request log
    # repeated it and nothing read it.
    db.execute("DROP TABLE IF EXISTS request_log")


def _v3(db: sqlite_utils.Database) -> None:
    # /v1/responses with store: true (appliance.response_store): the conversation the
    # model read and the Response object, per seat, until the retention setting expires it.
    db["responses"].create(
        {"id": str, "seat_id": int, "created_at": float, "context": str, "response": str},
        pk="id", not_null={"seat_id", "created_at", "context", "response"},
    )
    db["responses"].create_index(["created_at"])


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [_v1, _v2, _v3]


def open_db(path: Path) -> sqlite_utils.Database:
    """Open (creating) the database with WAL, durable-enough sync and a busy timeout."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None,
                           timeout=10.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    path.chmod(0o600)
    return sqlite_utils.Database(conn)


def migrate(db: sqlite_utils.Database) -> int:
    """Apply pending migrations in one transaction each; return the schema version."""
    db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = db.execute("SELECT MAX(version) FROM schema_version").fetchone()
    current = row[0] or 0
    for version, step in enumerate(MIGRATIONS, start=1):
        if version <= current:
            continue
        with db.conn:
            db.conn.execute("BEGIN")
            step(db)
            db.execute("INSERT INTO schema_version (version) VALUES (?)", [version])
        log.info("database migrated to schema version %d", version)
        current = version
    return current


class Store:
    """The open database plus the box's own writes. Thread-safe through one lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = open_db(path)
        self.lock = threading.RLock()
        self.version = migrate(self.db)

    def healthy(self) -> bool:
        try:
            with self.lock:
                self.db.execute("SELECT 1").fetchone()
            return True
        except sqlite3.Error:
            return False

    def close(self) -> None:
        with self.lock:
            self.db.conn.close()

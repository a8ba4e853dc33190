"""The box's one SQLite database: one opener, one transaction helper, one migration scheme.

Every component (the appliance, licensing, firmware) owns its tables and migrates them
with ``migrate(db, component, steps)``: the version of each component is a row of
``schema_versions``; the pending steps run in one ``BEGIN IMMEDIATE`` transaction together
with the row that records the new version, so a crash leaves them wholly done or not at all.
Steps write with ``db.execute`` only: sqlite-utils' write helpers commit as a side effect.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import sqlite_utils

log = logging.getLogger(__name__)
DB_FILE = "appliance.db"  # in the data directory
Step = Callable[[sqlite_utils.Database], None]

_locks_guard = threading.Lock()
_ATTR = "_box_tx_lock"


def open_db(path: Path) -> sqlite_utils.Database:
    """Open (creating) the database: WAL, synchronous NORMAL, foreign keys, a busy
    timeout, autocommit (transactions are explicit), mode 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None,
                           timeout=10.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    path.chmod(0o600)
    return sqlite_utils.Database(conn)


class _ConnLock:
    """Per-connection re-entrant lock plus nesting depth of our transactions."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.depth = 0
        self.after: list[Callable[[], None]] = []  # run once the outermost one commits


def _lock_for(db: sqlite_utils.Database) -> _ConnLock:
    """The lock kept on the Database object itself (sqlite3 connections take no attributes)."""
    with _locks_guard:
        lock = db.__dict__.get(_ATTR)
        if lock is None:
            lock = _ConnLock()
            setattr(db, _ATTR, lock)
        return lock


def share_lock(db: sqlite_utils.Database, lock: threading.RLock) -> None:
    """Make transactions on ``db`` take ``lock``, the lock the app already holds around
    its own use of the same connection, so the two never interleave."""
    _lock_for(db).lock = lock


@contextlib.contextmanager
def locked(db: sqlite_utils.Database) -> Iterator[None]:
    """Hold the connection's lock without a transaction: several reads that must agree
    (no write of another thread on the same connection lands between them)."""
    with _lock_for(db).lock:
        yield


@contextlib.contextmanager
def immediate(db: sqlite_utils.Database) -> Iterator[None]:
    """A write transaction taken up front (BEGIN IMMEDIATE), serialised across processes.

    Re-entrant within a thread: a nested call joins the outer transaction.
    """
    cl = _lock_for(db)
    with cl.lock:
        if cl.depth:
            cl.depth += 1
            try:
                yield
            finally:
                cl.depth -= 1
            return
        db.conn.execute("BEGIN IMMEDIATE")
        cl.depth = 1
        committed = False
        try:
            yield
        except BaseException:
            db.conn.execute("ROLLBACK")
            raise
        else:
            db.conn.execute("COMMIT")
            committed = True
        finally:
            cl.depth = 0
            callbacks, cl.after = cl.after, []
        if committed:
            for callback in callbacks:
                callback()


def after_commit(db: sqlite_utils.Database, callback: Callable[[], None]) -> None:
    """Run ``callback`` once what this thread has written to ``db`` is committed: at once
    outside a transaction, after the outermost ``immediate`` commits inside one, never if
    it rolls back (a nested ``immediate`` has committed nothing yet when it returns)."""
    cl = _lock_for(db)
    with cl.lock:
        if cl.depth:
            cl.after.append(callback)
            return
    callback()


def sql_step(*statements: str) -> Step:
    """A migration step made of plain SQL statements."""
    def step(db: sqlite_utils.Database) -> None:
        for sql in statements:
            db.execute(sql)

    return step


def version(db: sqlite_utils.Database, component: str, legacy_table: str | None = None
            ) -> int:
    """The schema version of ``component`` (0 when never migrated). ``legacy_table`` is
    where the component recorded its version before this scheme (read until migrated)."""
    if "schema_versions" in db.table_names():
        row = db.execute("SELECT version FROM schema_versions WHERE component = ?",
                         [component]).fetchone()
        if row is not None:
            return int(row[0])
    if legacy_table and legacy_table in db.table_names():
        return int(db.execute(f"SELECT MAX(version) FROM {legacy_table}").fetchone()[0] or 0)
    return 0


def migrate(db: sqlite_utils.Database, component: str, steps: Sequence[Step],
            legacy_table: str | None = None) -> int:
    """Apply ``component``'s pending ``steps`` (step i makes version i + 1); return the
    version. Idempotent and cheap once done; safe against a second process doing the same."""
    if version(db, component, legacy_table) >= len(steps):
        return len(steps)
    with immediate(db):
        db.execute("CREATE TABLE IF NOT EXISTS schema_versions (component TEXT PRIMARY KEY, "
                   "version INTEGER NOT NULL)")
        current = version(db, component, legacy_table)
        for number, step in enumerate(steps, start=1):
            if number <= current:
                continue
            step(db)
            db.execute("INSERT INTO schema_versions (component, version) VALUES (?, ?) "
                       "ON CONFLICT (component) DO UPDATE SET version = excluded.version",
                       [component, number])
            log.info("%s schema migrated to version %d", component, number)
    return len(steps)

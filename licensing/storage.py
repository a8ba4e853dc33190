"""Small I/O helpers shared by the licensing drivers: atomic files and SQLite transactions."""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import sqlite_utils

_locks_guard = threading.Lock()
_ATTR = "_licensing_tx_lock"


class _ConnLock:
    """Per-connection re-entrant lock plus nesting depth of our transactions."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.depth = 0


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the same dir, fsync, os.replace."""
    path = Path(path)
    ensure_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def ensure_dir(path: Path, mode: int = 0o700) -> Path:
    """Create ``path`` (and parents) with ``mode`` if missing; return it."""
    path = Path(path)
    if not path.is_dir():
        path.mkdir(parents=True, mode=mode, exist_ok=True)
        os.chmod(path, mode)
    return path


def read_limited(path: Path, max_bytes: int) -> bytes:
    """Read at most ``max_bytes`` + 1 bytes so callers can refuse oversize files cheaply."""
    with open(path, "rb") as fh:
        return fh.read(max_bytes + 1)


def _lock_for(db: sqlite_utils.Database) -> _ConnLock:
    """The lock kept on the Database object itself (sqlite3 connections take no attributes)."""
    with _locks_guard:
        lock = db.__dict__.get(_ATTR)
        if lock is None:
            lock = _ConnLock()
            setattr(db, _ATTR, lock)
        return lock


def share_lock(db: sqlite_utils.Database, lock: threading.RLock) -> None:
    """Make licensing transactions on ``db`` take ``lock``, the lock the app already holds
    around its own writes on the same connection, so the two never interleave."""
    _lock_for(db).lock = lock


@contextlib.contextmanager
def immediate(db: sqlite_utils.Database) -> Iterator[None]:
    """A write transaction taken up front (BEGIN IMMEDIATE), serialised across processes.

    Re-entrant within a thread: a nested call joins the outer transaction. Inside it, write
    with ``db.execute`` only: sqlite-utils' own write helpers commit as a side effect.
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
        try:
            yield
        except BaseException:
            db.conn.execute("ROLLBACK")
            raise
        else:
            db.conn.execute("COMMIT")
        finally:
            cl.depth = 0

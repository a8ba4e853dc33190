"""The appliance's own tables in the box's one SQLite database (``storage.db``).

Other packages (licensing, firmware) own their tables and migrate them the same way on the
same ``sqlite_utils.Database``; ``Store`` owns the connection the API process uses.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

import sqlite_utils

from storage.db import Step, migrate, open_db, sql_step

log = logging.getLogger(__name__)

MIGRATIONS: list[Step] = [
    sql_step("CREATE TABLE IF NOT EXISTS request_log (id INTEGER PRIMARY KEY, ts FLOAT "
             "NOT NULL, route TEXT NOT NULL, model TEXT, status INTEGER NOT NULL, "
             "prompt_tokens INTEGER, completion_tokens INTEGER, latency_ms FLOAT, "
             "seat_id INTEGER)"),
    # Every request is metered once, in licensing's ``usage`` table; the request log
    # repeated it and nothing read it.
    sql_step("DROP TABLE IF EXISTS request_log"),
    # /v1/responses with store: true (appliance.response_store): the conversation the
    # model read and the Response object, per seat, until the retention setting expires it.
    sql_step("CREATE TABLE IF NOT EXISTS responses (id TEXT PRIMARY KEY, seat_id INTEGER "
             "NOT NULL, created_at FLOAT NOT NULL, context TEXT NOT NULL, response TEXT "
             "NOT NULL)",
             "CREATE INDEX IF NOT EXISTS responses_created_at ON responses (created_at)"),
    # remote OpenAI-compatible endpoints for cloud overflow (appliance.remotes); their
    # keys live in 0600 files beside the database, never in it
    sql_step("CREATE TABLE IF NOT EXISTS remotes (name TEXT PRIMARY KEY, url TEXT NOT NULL,"
             " models TEXT NOT NULL, added_at FLOAT NOT NULL)"),
]
COMPONENT = "appliance"
LEGACY_TABLE = "schema_version"  # where versions were kept before storage.db's scheme


class Store:
    """The open database of the API process. Thread-safe through one lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db: sqlite_utils.Database = open_db(path)
        self.lock = threading.RLock()
        self.version = migrate(self.db, COMPONENT, MIGRATIONS, LEGACY_TABLE)

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

"""The licensing tables in the box's database and their versioned migrations.

Licensing owns its tables; ``migrate(db)`` creates or upgrades them through the box's one
migration scheme (``storage.db.migrate``, component ``licensing``). Every class that uses
them (SeatStore, AuditLog, ClockGuard) calls it, so the order of construction does not
matter. Idempotent and cheap once done.
"""

from __future__ import annotations

import logging

import sqlite_utils

from storage.db import migrate as db_migrate
from storage.db import sql_step
from storage.db import version as db_version

log = logging.getLogger(__name__)

V1 = [
    # AUTOINCREMENT: a deleted seat's id (and so its usage history) is never reused.
    """CREATE TABLE IF NOT EXISTS seats (
        id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE, contact TEXT NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('user', 'admin')),
        max_concurrent INTEGER NOT NULL, requests_per_minute INTEGER NOT NULL,
        tokens_per_day INTEGER NOT NULL, created_at INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS api_keys (
        id TEXT PRIMARY KEY, seat_id INTEGER NOT NULL REFERENCES seats(id),
        prefix TEXT NOT NULL, salt TEXT NOT NULL, hash TEXT NOT NULL,
        created_at INTEGER NOT NULL, revoked_at INTEGER)""",
    "CREATE INDEX IF NOT EXISTS api_keys_seat ON api_keys (seat_id)",
    """CREATE TABLE IF NOT EXISTS usage (
        id INTEGER PRIMARY KEY, seat_id INTEGER NOT NULL, ts INTEGER NOT NULL,
        day TEXT NOT NULL, month TEXT NOT NULL, route TEXT NOT NULL, model TEXT NOT NULL,
        status INTEGER NOT NULL, tokens_in INTEGER NOT NULL, tokens_out INTEGER NOT NULL,
        images INTEGER NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS usage_seat_day ON usage (seat_id, day)",
    """CREATE TABLE IF NOT EXISTS audit_log (
        id INTEGER PRIMARY KEY, ts INTEGER NOT NULL, actor TEXT NOT NULL,
        action TEXT NOT NULL, details TEXT NOT NULL, prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS licensing_clock (
        id INTEGER PRIMARY KEY CHECK (id = 1), high_water INTEGER NOT NULL,
        counter INTEGER NOT NULL, locked TEXT NOT NULL)""",
]

V2 = [
    # trusted time never moves back: an acknowledged slow wall clock runs ``skew`` behind
    "ALTER TABLE licensing_clock ADD COLUMN skew INTEGER NOT NULL DEFAULT 0",
    # the database half of the trusted record (the other half lives outside data/)
    """CREATE TABLE IF NOT EXISTS licensing_trust (
        id INTEGER PRIMARY KEY CHECK (id = 1), record TEXT NOT NULL)""",
]

V3 = [
    # fair share of the LLM queue: a seat's weight and whether it is a batch seat
    "ALTER TABLE seats ADD COLUMN share INTEGER NOT NULL DEFAULT 1",
    "ALTER TABLE seats ADD COLUMN priority TEXT NOT NULL DEFAULT 'interactive'",
]

V4 = [
    # the box that served each request (a fleet meters every box's requests on the head)
    "ALTER TABLE usage ADD COLUMN box TEXT NOT NULL DEFAULT ''",
    # boxes bound to a fleet licence's max_boxes as they first joined (licensing.fleet)
    """CREATE TABLE IF NOT EXISTS fleet_boxes (
        licence_id TEXT NOT NULL, box_key TEXT NOT NULL, box TEXT NOT NULL,
        fingerprint TEXT NOT NULL, bound_at INTEGER NOT NULL,
        PRIMARY KEY (licence_id, box_key))""",
]

V5 = [
    # cloud overflow: which requests of the seat may leave the box ("none", "llm",
    # "llm+vision"; appliance.egress)
    "ALTER TABLE seats ADD COLUMN egress TEXT NOT NULL DEFAULT 'none'",
]

MIGRATIONS: list[list[str]] = [V1, V2, V3, V4, V5]
VERSION = len(MIGRATIONS)
COMPONENT = "licensing"
LEGACY_TABLE = "licensing_schema"  # where versions were kept before storage.db's scheme


def version(db: sqlite_utils.Database) -> int:
    """Schema version recorded in the database (0 when never migrated)."""
    return db_version(db, COMPONENT, LEGACY_TABLE)


def migrate(db: sqlite_utils.Database) -> int:
    """Create or upgrade the licensing tables; return the schema version."""
    return db_migrate(db, COMPONENT, [sql_step(*m) for m in MIGRATIONS], LEGACY_TABLE)

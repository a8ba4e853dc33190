"""Trusted state: what deleting the data directory (or the database alone) does not reset.

Two copies are kept and merged on every read, so wiping one place resets nothing:

- ``<state_dir>/machine-<id>.json``: one record per machine (``id`` hashes the machine facts,
  so a state directory copied to another box does not apply there), outside ``data/``;
- the ``licensing_trust`` table in the box's database.

The record holds when the evaluation started, the newest licence ever installed
(``issued_at``, ``serial``), the licences deactivated here and the clock's high-water mark.
The state directory also holds ``audit.key`` (the audit chain's HMAC key, 0600) and the
mirrored head of the audit chain (file only: the database is what it checks).

``state_dir`` defaults to ``$APPLIANCE_STATE_DIR``, else ``/var/lib/appliance-state`` when it
is writable, else ``$XDG_STATE_HOME/appliance`` (``~/.local/state/appliance``). Root can still
delete or edit it; the README says what that buys.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import secrets
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import sqlite_utils

from licensing import schema
from licensing.errors import StateError
from storage.db import immediate
from storage.files import atomic_write, ensure_dir

log = logging.getLogger(__name__)

STATE_ENV = "APPLIANCE_STATE_DIR"
SYSTEM_STATE_DIR = Path("/var/lib/appliance-state")
GENESIS = "0" * 64
_process_lock = threading.Lock()


def default_state_dir() -> Path:
    """``$APPLIANCE_STATE_DIR``, else the system dir if writable, else a per-user dir."""
    if env := os.environ.get(STATE_ENV):
        return Path(env)
    system = SYSTEM_STATE_DIR
    parent = system if system.exists() else system.parent
    if os.access(parent, os.W_OK):
        return system
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "appliance"


def machine_id(facts: Mapping[str, str]) -> str:
    """Stable name of this machine's record: ``/etc/machine-id`` if known, else the facts
    that do not change with a rename (hostname is left out)."""
    basis = facts.get("machine_id") or json.dumps(
        {k: v for k, v in sorted(facts.items()) if k != "hostname"}, sort_keys=True)
    return hashlib.sha256(b"appliance-machine\0" + basis.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class TrustRecord:
    """Facts that may only grow; ``merge`` of two copies keeps the stronger of each."""

    evaluation_started_at: int = 0
    evaluation_id: str = ""
    newest: tuple[int, int] = (0, 0)  # (issued_at, serial) of the newest licence installed
    newest_id: str = ""
    deactivated: tuple[str, ...] = ()
    high_water: int = 0
    audit_head: tuple[int, str] = (0, GENESIS)

    def merge(self, other: TrustRecord) -> TrustRecord:
        starts = [t for t in (self.evaluation_started_at, other.evaluation_started_at) if t]
        first = min(starts) if starts else 0
        eval_id = next((r.evaluation_id for r in (self, other)
                        if r.evaluation_started_at == first and r.evaluation_id), "")
        newer = max(self, other, key=lambda r: r.newest)
        return TrustRecord(
            evaluation_started_at=first, evaluation_id=eval_id,
            newest=newer.newest, newest_id=newer.newest_id,
            deactivated=tuple(sorted(set(self.deactivated) | set(other.deactivated))),
            high_water=max(self.high_water, other.high_water),
            audit_head=max(self.audit_head, other.audit_head, key=lambda h: h[0]),
        )  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return {
            "evaluation_started_at": self.evaluation_started_at,
            "evaluation_id": self.evaluation_id, "newest": list(self.newest),
            "newest_id": self.newest_id, "deactivated": list(self.deactivated),
            "high_water": self.high_water, "audit_head": list(self.audit_head),
        }  # fmt: skip

    @classmethod
    def from_json(cls, d: Any) -> TrustRecord:
        """Parse a stored record; StateError when it is not one."""
        try:
            return cls(
                evaluation_started_at=int(d.get("evaluation_started_at", 0)),
                evaluation_id=str(d.get("evaluation_id", "")),
                newest=(int(d.get("newest", [0, 0])[0]), int(d.get("newest", [0, 0])[1])),
                newest_id=str(d.get("newest_id", "")),
                deactivated=tuple(str(x) for x in d.get("deactivated", [])),
                high_water=int(d.get("high_water", 0)),
                audit_head=(int(d.get("audit_head", [0, ""])[0]),
                            str(d.get("audit_head", [0, GENESIS])[1])),
            )  # fmt: skip
        except (AttributeError, TypeError, ValueError, IndexError) as exc:
            raise StateError(f"trusted state record is malformed: {exc}") from exc


@dataclass
class TrustStore:
    """I/O driver for ``TrustRecord``: the state-dir file plus the database copy."""

    state_dir: Path
    facts: Callable[[], Mapping[str, str]]
    db: sqlite_utils.Database | None = None
    _name: str = field(default="", init=False)

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir)
        if self.db is not None:
            schema.migrate(self.db)

    @property
    def path(self) -> Path:
        if not self._name:
            self._name = f"machine-{machine_id(self.facts())}.json"
        return self.state_dir / self._name

    # keys ----------------------------------------------------------------------------
    def audit_key(self) -> bytes:
        """The audit chain's HMAC key, created (0600) at first use; never in the database."""
        path = self.state_dir / "audit.key"
        with self._locked():
            if not path.exists():
                atomic_write(path, secrets.token_hex(32).encode(), mode=0o600)
                log.info("licensing: created audit key %s", path)
        try:
            return bytes.fromhex(path.read_text().strip())
        except (OSError, ValueError) as exc:
            raise StateError(f"audit key {path} is unreadable: {exc}") from exc

    # record --------------------------------------------------------------------------
    def load(self) -> TrustRecord:
        """The merged record (file and database); an unreadable copy is reported, not used."""
        return self._file().merge(self._db())

    def update(self, change: Callable[[TrustRecord], TrustRecord]) -> TrustRecord:
        """Apply ``change`` to the merged record and write both copies; returns the result.

        Locks in one order everywhere: the database transaction first, then the file lock."""
        tx = immediate(self.db) if self.db is not None else contextlib.nullcontext()
        with tx, self._locked():
            new = change(self.load())
            atomic_write(self.path, json.dumps(new.to_json(), sort_keys=True).encode())
            if self.db is not None:
                db_part = replace(new, audit_head=(0, GENESIS))
                self.db.execute(
                    "INSERT OR REPLACE INTO licensing_trust (id, record) VALUES (1, ?)",
                    [json.dumps(db_part.to_json(), sort_keys=True)])
        return new

    def _file(self) -> TrustRecord:
        try:
            return TrustRecord.from_json(json.loads(self.path.read_text()))
        except FileNotFoundError:
            return TrustRecord()
        except (OSError, ValueError, StateError) as exc:
            log.warning("licensing: trusted state file %s unreadable: %s", self.path, exc)
            return TrustRecord()

    def _db(self) -> TrustRecord:
        if self.db is None:
            return TrustRecord()
        row = self.db.execute("SELECT record FROM licensing_trust WHERE id = 1").fetchone()
        if row is None:
            return TrustRecord()
        try:
            return replace(TrustRecord.from_json(json.loads(row[0])), audit_head=(0, GENESIS))
        except (ValueError, StateError) as exc:
            log.warning("licensing: trusted state in the database unreadable: %s", exc)
            return TrustRecord()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise read-modify-write across threads and processes (flock on a lock file)."""
        try:
            ensure_dir(self.state_dir)
        except OSError as exc:
            raise StateError(f"state directory {self.state_dir} is not writable: {exc}") from exc
        with _process_lock, open(self.state_dir / ".lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

"""Helpers shared by the licensing tests: injected clocks and machine facts, box-style DB."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import sqlite_utils

from licensing import crypto
from licensing.fingerprint import Fingerprint
from licensing.issuer import ActivationRequest

NOW = 1_795_000_000  # 2026-11-18, UTC epoch seconds
DAY = 86_400
FACTS = {
    "machine_id": "4c4c4544-0042-3510-8052-b4c04f4e4d32",
    "cpu": "AMD EPYC 9354 32-Core Processor",
    "macs": "3c:ec:ef:01:02:03,3c:ec:ef:01:02:04",
    "rootfs": "0b1c7f6e-2d4a-4e1b-9a57-7c3a9e2f5d10",
    "hostname": "box-17",
}


class Clock:
    """A settable clock passed wherever code takes ``clock=`` (wall) or ``monotonic=``."""

    def __init__(self, now: float) -> None:
        self.now = float(now)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Facts:
    """Machine facts that a test can change (a replaced NIC, a renamed host...)."""

    def __init__(self, facts: dict[str, str]) -> None:
        self.facts = dict(facts)

    def __call__(self) -> dict[str, str]:
        return dict(self.facts)


def open_box_db(path: Path) -> sqlite_utils.Database:
    """Open a database file the way the appliance does (WAL, autocommit, any thread)."""
    conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=10)
    conn.execute("PRAGMA journal_mode=WAL")
    return sqlite_utils.Database(conn)


SALT = "00112233445566778899aabbccddeeff"


def make_request(facts: dict[str, str] = FACTS, salt: str = SALT) -> ActivationRequest:
    box = crypto.SigningKey.generate()
    return ActivationRequest(
        Fingerprint.from_facts(facts, salt), crypto.b64(box.public), "ab" * 16, NOW
    )

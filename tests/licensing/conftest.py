"""Fixtures for licensing tests: real keys, real SQLite files, injected clocks and facts."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlite_utils

from licensing import crypto
from licensing.issuer import issue
from tests.licensing.support import FACTS, NOW, Clock, Facts, make_request, open_box_db


@pytest.fixture(scope="session")
def vendor_key() -> crypto.SigningKey:
    return crypto.SigningKey.generate()


@pytest.fixture(scope="session")
def trusted(vendor_key: crypto.SigningKey) -> dict[str, bytes]:
    return {vendor_key.key_id: vendor_key.public}


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
def mono() -> Clock:
    return Clock(1000.0)


@pytest.fixture
def facts() -> Facts:
    return Facts(FACTS)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[sqlite_utils.Database]:
    database = open_box_db(tmp_path / "appliance.db")
    yield database
    database.conn.close()


@pytest.fixture
def licence_bytes(vendor_key: crypto.SigningKey) -> Callable[..., bytes]:
    """Issue a licence for FACTS (or ``facts=``) with sensible defaults, overridable."""

    def make(**kw) -> bytes:
        request = kw.pop("request", None) or make_request(kw.pop("facts", FACTS))
        key = kw.pop("key", vendor_key)
        args = {
            "customer": "ACME Corp", "seats": 3, "days": 365, "models": "smollm2-*,ppocr-v4",
            "features": "chat,ocr", "now": NOW, "grace_days": 14, "licence_id": "lic-test-1",
        }  # fmt: skip
        args.update(kw)
        return issue(request, key, **args)

    return make

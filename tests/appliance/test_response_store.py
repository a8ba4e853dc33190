"""Stored responses on a real SQLite file: per seat, continued history, retention."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.errors import ResponseNotFoundError
from appliance.response_store import DAY_S, ResponseStore
from appliance.store import MIGRATIONS, Store

T0 = 1_800_000_000.0


def response(ident: str, at: float) -> dict:
    return {"id": ident, "created_at": at, "output": [
        {"type": "message", "role": "assistant", "content": [
            {"type": "output_text", "text": "Hi Ada"}]}]}


@pytest.fixture
def kept(tmp_path: Path):
    store = Store(tmp_path / "appliance.db")
    assert store.version == len(MIGRATIONS)
    assert "responses" in store.db.table_names()
    yield ResponseStore(store, retention_days=30, clock=lambda: T0)
    store.close()


def test_a_seat_reads_its_own_responses_only(kept: ResponseStore) -> None:
    asked = [{"type": "message", "role": "user", "content": "I am Ada"}]
    kept.put(1, response("resp_a", T0), asked)
    got = kept.get(1, "resp_a")
    assert got.history() == [*asked, *response("resp_a", T0)["output"]]
    for seat, ident in ((2, "resp_a"), (1, "resp_b")):
        with pytest.raises(ResponseNotFoundError, match=ident):
            kept.get(seat, ident)
    with pytest.raises(ResponseNotFoundError):
        kept.delete(2, "resp_a")
    kept.delete(1, "resp_a")
    with pytest.raises(ResponseNotFoundError):
        kept.get(1, "resp_a")


def test_expired_rows_are_absent_and_cleaned_up(kept: ResponseStore) -> None:
    kept.put(1, response("resp_new", T0 - 29 * DAY_S), [])
    kept.put(1, response("resp_old", T0 - 31 * DAY_S), [])
    with pytest.raises(ResponseNotFoundError):  # past retention: gone even before cleanup
        kept.get(1, "resp_old")
    assert kept.expire() == 1  # only the old one
    assert kept.get(1, "resp_new").id == "resp_new"
    assert kept.expire(now=T0 + 2 * DAY_S) == 1
    with pytest.raises(ResponseNotFoundError):
        kept.get(1, "resp_new", now=T0)


def test_a_write_expires_old_rows_first(kept: ResponseStore) -> None:
    db = kept.store.db
    kept.put(1, response("resp_new", T0), [])
    db.execute("INSERT INTO responses VALUES ('resp_stale', 1, ?, '[]', '{}')",
               [T0 - 40 * DAY_S])
    kept.put(1, response("resp_next", T0), [])
    assert sorted(r["id"] for r in db["responses"].rows) == ["resp_new", "resp_next"]

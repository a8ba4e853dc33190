"""The hash-chained audit log finds edited, deleted and re-ordered rows."""

from __future__ import annotations

import itertools

import pytest

from licensing.audit import GENESIS, AuditLog
from licensing.errors import InvalidInput


@pytest.fixture
def audit(db, clock) -> AuditLog:
    log = AuditLog(db, clock)
    for i in range(5):
        log.append("admin", "seat.create", {"seat_id": i, "name": f"user{i}"})
        clock.advance(1)
    return log


def test_chain_verifies_and_links(audit) -> None:
    report = audit.verify()
    assert report.ok and report.rows == 5
    rows = audit.tail(10)
    assert rows[0].prev_hash == GENESIS
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(rows))
    assert audit.head() == (5, rows[-1].hash)


def test_edited_row_detected(audit, db) -> None:
    db.execute("""UPDATE audit_log SET details = '{"name":"mallory","seat_id":2}' WHERE id = 3""")
    report = audit.verify()
    assert not report.ok and report.bad_id == 3 and "does not match" in report.reason


def test_edited_actor_with_recomputed_hash_breaks_next_link(audit, db) -> None:
    from licensing.audit import row_hash

    row = audit.tail(10)[1]
    forged = row_hash(row.prev_hash, row.id, row.ts, "mallory", row.action, row.details)
    db.execute("UPDATE audit_log SET actor = 'mallory', hash = ? WHERE id = 2", [forged])
    report = audit.verify()
    assert not report.ok and report.bad_id == 3 and "link" in report.reason


def test_deleted_row_detected(audit, db) -> None:
    db.execute("DELETE FROM audit_log WHERE id = 2")
    report = audit.verify()
    assert not report.ok and report.bad_id == 3 and "deleted" in report.reason


def test_tail_filters_and_details_roundtrip(audit) -> None:
    audit.append("update-engineer", "firmware.apply", {"bundle": "1.2.3", "slots": ["a", "b"]})
    last = audit.tail(1)[0]
    assert last.details == {"bundle": "1.2.3", "slots": ["a", "b"]}
    assert [r.action for r in audit.tail(10, action="firmware.")] == ["firmware.apply"]
    assert len(audit.tail(10, actor="admin")) == 5
    assert [r.id for r in audit.tail(2)] == [5, 6]
    assert audit.verify().ok


def test_bad_audit_input_refused(audit) -> None:
    with pytest.raises(InvalidInput):
        audit.append("", "x", {})
    with pytest.raises(InvalidInput):
        audit.append("admin", "x", {"obj": object()})


def test_concurrent_appends_keep_the_chain(audit) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def writer(n: int) -> None:
        for i in range(20):
            audit.append(f"thread{n}", "firmware.step", {"i": i})

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(writer, range(8)))
    report = audit.verify_chain()
    assert report.ok and report.rows == 5 + 160


def test_the_mirrored_head_waits_for_the_callers_commit(db, clock, tmp_path) -> None:
    """A key and its audit row commit together in the caller's transaction; the head
    mirrored outside the database must not pass the rows before that commit (a crash in
    between read as deleted rows: found by the SIGKILL test)."""
    from licensing.trust import TrustStore
    from storage.db import immediate

    trust = TrustStore(tmp_path / "state", lambda: {"machine": "test"}, db)
    log = AuditLog.keyed(db, trust, clock)
    log.append("admin", "seat.create", {"seat_id": 1})
    assert trust.load().audit_head[0] == 1
    with immediate(db):
        log.append("admin", "key.issue", {"key_id": "k2"})
        assert trust.load().audit_head[0] == 1  # not committed yet: the mirror waits
    assert trust.load().audit_head[0] == 2 and log.verify().ok
    with pytest.raises(RuntimeError), immediate(db):
        log.append("admin", "key.issue", {"key_id": "k3"})
        raise RuntimeError("the caller fails: its transaction rolls back")
    assert trust.load().audit_head[0] == 2 and log.verify().ok  # no row 3, no mirror of it

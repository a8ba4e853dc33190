"""Seats, API keys, usage metering and per-seat limits over a real SQLite file."""

from __future__ import annotations

import csv
import io
from concurrent.futures import ThreadPoolExecutor

import pytest

from licensing import schema
from licensing.errors import InvalidInput, NotFound, RateLimited, SeatLimitReached, Unauthenticated
from licensing.limits import SeatLimiter
from licensing.seats import SeatLimits, SeatStore
from tests.licensing.support import DAY, NOW


@pytest.fixture
def store(db, clock) -> SeatStore:
    s = SeatStore(db, clock)
    assert s.migrate() == schema.VERSION
    return s


def test_migrate_is_idempotent_and_versioned(store, db) -> None:
    assert store.migrate() == schema.VERSION
    assert schema.version(db) == schema.VERSION
    assert {"seats", "api_keys", "usage", "audit_log", "schema_versions"} <= set(db.table_names())


def test_seat_n_plus_one_refused(store) -> None:
    for i in range(3):
        store.create_seat(f"user{i}", "u@example.com", max_seats=3)
    with pytest.raises(SeatLimitReached, match="allows 3 seat"):
        store.create_seat("user3", max_seats=3)
    store.delete_seat(store.list_seats()[0].id)
    assert store.create_seat("user3", max_seats=3).name == "user3"


def test_seat_input_validated(store) -> None:
    with pytest.raises(InvalidInput):
        store.create_seat("x", role="root", max_seats=5)
    with pytest.raises(InvalidInput):
        store.create_seat("", max_seats=5)
    store.create_seat("alice", max_seats=5)
    with pytest.raises(InvalidInput, match="already exists"):
        store.create_seat("alice", max_seats=5)


def test_key_authenticates_and_revoked_key_refused(store) -> None:
    seat = store.create_seat("alice", max_seats=5)
    issued = store.issue_key(seat.id)
    assert issued.secret.startswith("sk-box-") and "***" in repr(issued)
    got, key_id = store.authenticate(issued.secret)
    assert (got.id, key_id) == (seat.id, issued.info.key_id)
    store.revoke_key(key_id)
    with pytest.raises(Unauthenticated, match="revoked"):
        store.authenticate(issued.secret)


def test_wrong_and_malformed_keys_refused(store) -> None:
    seat = store.create_seat("alice", max_seats=5)
    secret = store.issue_key(seat.id).secret
    tampered = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    for bad in (tampered, "", "sk-box-", "Bearer " + secret, secret + "x"):
        with pytest.raises(Unauthenticated):
            store.authenticate(bad)


def test_rotate_revokes_old_key(store) -> None:
    seat = store.create_seat("alice", max_seats=5)
    old = store.issue_key(seat.id)
    new = store.rotate_key(old.info.key_id)
    assert store.authenticate(new.secret)[0].id == seat.id
    with pytest.raises(Unauthenticated):
        store.authenticate(old.secret)
    assert [k.active for k in store.list_keys(seat.id)] == [False, True]
    with pytest.raises(NotFound):
        store.rotate_key("000000000000")


def test_keys_never_stored_in_clear(store, db, tmp_path) -> None:
    seat = store.create_seat("alice", max_seats=5)
    secrets_ = [store.issue_key(seat.id).secret for _ in range(3)]
    db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("appliance.db*"))
    for secret in secrets_:
        assert secret.encode() not in raw
        assert secret.split(".", 1)[1].encode() not in raw
        assert secret.split(".", 1)[0].encode() in raw  # the display prefix is stored


def test_usage_scoped_per_seat_with_totals_and_csv(store, clock) -> None:
    a = store.create_seat("alice", max_seats=5)
    b = store.create_seat("bob", max_seats=5)
    store.record_usage(a.id, route="/v1/chat/completions", model="smollm2", status=200,
                       tokens_in=10, tokens_out=20)  # fmt: skip
    store.record_usage(a.id, route="/v1/ocr", model="ppocr-v4", status=200, images=2)
    clock.advance(DAY)
    store.record_usage(a.id, route="/v1/chat/completions", model="smollm2", status=500,
                       tokens_in=5)  # fmt: skip
    store.record_usage(b.id, route="/v1/chat/completions", model="smollm2", status=200,
                       tokens_in=1000, tokens_out=1000)  # fmt: skip
    days = store.usage_totals(a.id, "day")
    assert [
        (d.period, d.requests, d.errors, d.tokens_in, d.tokens_out, d.images) for d in days
    ] == [
        ("2026-11-19", 1, 1, 5, 0, 0),
        ("2026-11-18", 2, 0, 10, 20, 2),
    ]
    month = store.usage_totals(a.id, "month")
    assert [(m.period, m.requests, m.tokens_in) for m in month] == [("2026-11", 3, 15)]
    rows = list(csv.DictReader(io.StringIO(store.usage_csv(a.id))))
    assert len(rows) == 3 and {r["model"] for r in rows} == {"smollm2", "ppocr-v4"}
    assert "1000" not in store.usage_csv(a.id)  # nothing of bob's
    assert store.usage_csv_all_seats().count("\n") == 5
    assert store.tokens_on(b.id, "2026-11-19") == 2000


def test_requests_per_minute_limit_with_retry_after(clock) -> None:
    limiter = SeatLimiter(lambda seat, day: 0, clock)
    limits = SeatLimits(max_concurrent=0, requests_per_minute=2, tokens_per_day=0)
    limiter.acquire(1, "alice", limits)
    clock.advance(10)
    limiter.acquire(1, "alice", limits)
    with pytest.raises(RateLimited, match="2 requests per minute") as exc:
        limiter.acquire(1, "alice", limits)
    assert exc.value.retry_after == 50
    limiter.acquire(2, "bob", limits)  # other seats are unaffected
    clock.advance(50)
    limiter.acquire(1, "alice", limits)


def test_concurrency_limit_releases(clock) -> None:
    limiter = SeatLimiter(lambda seat, day: 0, clock)
    limits = SeatLimits(max_concurrent=2, requests_per_minute=0, tokens_per_day=0)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: limiter.acquire(1, "alice", limits), range(2)))
    with pytest.raises(RateLimited, match="already has 2") as exc:
        limiter.acquire(1, "alice", limits)
    assert exc.value.retry_after == 1
    limiter.release(1)
    limiter.acquire(1, "alice", limits)
    assert limiter.active(1) == 2


def test_tokens_per_day_limit_until_utc_midnight(store, clock) -> None:
    seat = store.create_seat("alice", max_seats=5)
    limits = SeatLimits(max_concurrent=0, requests_per_minute=0, tokens_per_day=100)
    store.record_usage(seat.id, route="/v1/x", model="m", status=200, tokens_in=60)
    limiter = SeatLimiter(store.tokens_on, clock)
    limiter.acquire(seat.id, "alice", limits)
    limiter.add_tokens(seat.id, 40, clock.now)
    with pytest.raises(RateLimited, match="100 tokens") as exc:
        limiter.acquire(seat.id, "alice", limits)
    midnight = (NOW // DAY + 1) * DAY
    assert exc.value.retry_after == midnight - NOW
    clock.now = midnight
    limiter.acquire(seat.id, "alice", limits)


def test_csv_export_neutralises_formulas(store) -> None:
    seat = store.create_seat("alice", max_seats=5)
    store.record_usage(seat.id, route="/v1/x", model='=HYPERLINK("http://evil")', status=200)
    rows = list(csv.DictReader(io.StringIO(store.usage_csv(seat.id))))
    assert rows[0]["model"].startswith("'=")


def test_usage_rows_name_the_box_that_served_them(store) -> None:
    seat = store.create_seat("carol", max_seats=5)
    store.record_usage(seat.id, route="/v1/x", model="m", status=200, box="box-a")
    store.record_usage(seat.id, route="/v1/x", model="m", status=200, box="box-b")
    assert [r["box"] for r in store.usage_rows(seat.id)] == ["box-a", "box-b"]
    rows = list(csv.DictReader(io.StringIO(store.usage_csv_all_seats())))
    assert [r["box"] for r in rows] == ["box-a", "box-b"]


def test_v3_usage_rows_survive_the_box_column_migration(tmp_path) -> None:
    from storage.db import migrate as db_migrate
    from storage.db import sql_step
    from tests.licensing.support import open_box_db

    db = open_box_db(tmp_path / "old.db")
    db_migrate(db, schema.COMPONENT, [sql_step(*m) for m in schema.MIGRATIONS[:3]])
    db.execute("INSERT INTO usage (seat_id, ts, day, month, route, model, status, tokens_in,"
               " tokens_out, images) VALUES (1, 5, '1970-01-01', '1970-01', '/v1/x', 'm',"
               " 200, 1, 2, 0)")
    assert schema.migrate(db) == schema.VERSION >= 4
    assert db.execute("SELECT tokens_out, box FROM usage").fetchall() == [(2, "")]
    db.conn.close()


def test_egress_policy_defaults_to_none_and_is_validated(store) -> None:
    seat = store.create_seat("dave", max_seats=5)
    assert seat.limits.egress == "none" and seat.to_json()["egress"] == "none"
    changed = store.set_limits(seat.id, SeatLimits(egress="llm"))
    assert changed.limits.egress == "llm" and store.get_seat(seat.id).limits.egress == "llm"
    with pytest.raises(InvalidInput, match="egress"):
        SeatLimits(egress="everything")


def test_seats_made_before_the_egress_column_keep_everything_on_the_box(tmp_path) -> None:
    from storage.db import migrate as db_migrate
    from storage.db import sql_step
    from tests.licensing.support import open_box_db

    db = open_box_db(tmp_path / "old.db")
    db_migrate(db, schema.COMPONENT, [sql_step(*m) for m in schema.MIGRATIONS[:4]])
    db.execute("INSERT INTO seats (name, contact, role, max_concurrent, requests_per_minute,"
               " tokens_per_day, created_at) VALUES ('old', '', 'user', 4, 60, 0, 5)")
    assert schema.migrate(db) == schema.VERSION
    assert SeatStore(db).list_seats()[0].limits.egress == "none"
    db.conn.close()

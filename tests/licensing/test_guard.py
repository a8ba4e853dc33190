"""LicenseGuard end to end over a real data directory and database file."""

from __future__ import annotations

import time

import pytest

from licensing import crypto
from licensing.errors import (
    ClockTampered,
    FingerprintMismatch,
    Forbidden,
    LicenceDeactivated,
    LicenceExpired,
    LicenceMissing,
    NotEntitled,
    RateLimited,
    SeatLimitReached,
    Unauthenticated,
)
from licensing.guard import LicenseGuard, bootstrap_evaluation
from licensing.seats import SeatLimits
from licensing.verify import verify_receipt
from tests.licensing.support import DAY, NOW, open_box_db

HOUR = 3600


@pytest.fixture
def box(tmp_path, db, trusted, clock, mono, facts):
    def make(**kw) -> LicenseGuard:
        args = {"trusted_keys": trusted, "clock": clock, "monotonic": mono, "facts": facts,
                "refresh_interval": 0}  # fmt: skip
        args.update(kw)
        return LicenseGuard(tmp_path / "data", db, **args)

    return make


@pytest.fixture
def licensed(box, licence_bytes):
    guard = box()
    guard.import_licence("vendor-test", licence_bytes(days=30, grace_days=7))
    admin = guard.create_seat("test", "root", role="admin")
    user = guard.create_seat("test", "alice", "alice@example.com")
    return guard, guard.issue_key("test", admin.id).secret, guard.issue_key("test", user.id)


def test_check_returns_seat_context(licensed) -> None:
    guard, _, user_key = licensed
    ctx = guard.check(user_key.secret, "smollm2-135m-instruct", "chat")
    assert (ctx.name, ctx.role, ctx.licence_state, ctx.evaluation) == (
        "alice",
        "user",
        "valid",
        False,
    )
    assert ctx.days_left == 30 and ctx.licence_id == "lic-test-1"
    st = guard.status()
    assert st.label == "LICENSED" and st.seats_used == 2 and st.licence.seats == 3


def test_errors_by_kind(licensed) -> None:
    guard, admin_key, user_key = licensed
    with pytest.raises(Unauthenticated):
        guard.check("sk-box-000000000000." + "A" * 43)
    with pytest.raises(NotEntitled, match="gemma"):
        guard.check(user_key.secret, "gemma3-270m", "chat")
    with pytest.raises(NotEntitled, match="embeddings"):
        guard.check(user_key.secret, "smollm2-135m-instruct", "embeddings")
    # the API admits the key once, then asks per model and feature
    guard.check(user_key.secret)
    guard.entitle("smollm2-135m-instruct", "chat")
    with pytest.raises(NotEntitled, match="gemma"):
        guard.entitle("gemma3-270m", "chat")
    with pytest.raises(NotEntitled, match="embeddings"):
        guard.entitle("smollm2-135m-instruct", "embeddings")
    with pytest.raises(Forbidden, match="not an admin"):
        guard.check_admin(user_key.secret)
    assert guard.check_admin(admin_key).role == "admin"


def test_seat_n_plus_one_refused_by_licence_count(licensed) -> None:
    guard, _, _ = licensed
    guard.create_seat("test", "bob")
    with pytest.raises(SeatLimitReached, match="allows 3"):
        guard.create_seat("test", "carol")


def test_smaller_licence_disables_newest_seats(licensed, licence_bytes) -> None:
    guard, admin_key, user_key = licensed
    guard.import_licence("root", licence_bytes(licence_id="lic-small", seats=1))
    assert guard.check(admin_key).name == "root"  # the oldest seat stays covered
    with pytest.raises(Forbidden, match="beyond the 1 seat"):
        guard.check(user_key.secret)
    guard.delete_seat("root", guard.check_admin(admin_key).seat_id)
    assert guard.check(user_key.secret).name == "alice"


def test_revocation_is_immediate_despite_cache(licensed) -> None:
    guard, _, user_key = licensed
    guard.key_ttl = 3600
    guard.check(user_key.secret)  # now cached
    guard.revoke_key("admin", user_key.info.key_id)
    with pytest.raises(Unauthenticated, match="revoked"):
        guard.check(user_key.secret)


def test_grace_then_expiry_at_exact_boundaries(licensed, clock) -> None:
    guard, admin_key, user_key = licensed
    lic = guard.activation.installed().verified.licence
    clock.now = lic.expires_at - 1
    assert guard.check(user_key.secret).licence_state == "valid"
    clock.now = lic.expires_at
    ctx = guard.check(user_key.secret)
    assert (ctx.licence_state, ctx.days_left) == ("grace", 7)
    assert guard.status().label == "GRACE"
    clock.now = lic.grace_ends_at - 1
    assert guard.check(user_key.secret).licence_state == "grace"
    clock.now = lic.grace_ends_at
    with pytest.raises(LicenceExpired, match="lic-test-1"):
        guard.check(user_key.secret)
    assert guard.check_admin(admin_key).licence_state == "expired"  # admin still works
    assert guard.status().label == "EXPIRED"


def test_clock_set_back_locks_until_ack(licensed, clock) -> None:
    guard, admin_key, user_key = licensed
    clock.advance(5 * DAY)
    guard.check(user_key.secret)
    clock.advance(-2 * DAY)
    with pytest.raises(ClockTampered, match="ack-clock"):
        guard.check(user_key.secret)
    assert guard.status().label == "LOCKED (CLOCK)"
    assert guard.check_admin(admin_key).role == "admin"
    guard.acknowledge_clock("root")
    assert guard.check(user_key.secret).name == "alice"
    assert guard.audit.tail(1)[0].action == "clock.acknowledge"
    clock.advance(-5 * DAY)  # acknowledged into a time before the licence starts...
    guard.acknowledge_clock("root")
    # ...but trusted time does not follow the wall clock back: still licensed, not "not yet"
    assert guard.check(user_key.secret).name == "alice"
    assert guard.status().label == "LICENSED"
    assert guard.audit.verify().ok


def test_clock_back_within_tolerance_is_fine(licensed, clock) -> None:
    guard, _, user_key = licensed
    clock.advance(10 * HOUR)
    guard.check(user_key.secret)
    clock.advance(-10 * HOUR)
    assert guard.check(user_key.secret).name == "alice"


def test_fresh_activation_clears_clock_lock(licensed, clock, licence_bytes) -> None:
    guard, _, user_key = licensed
    clock.now -= 3 * DAY
    guard.refresh(force=True)
    assert guard.status().clock_locked
    # the vendor's clock was not set back: the fresh activation is newer than the installed one
    guard.import_licence("vendor-test", licence_bytes(licence_id="lic-test-2"))
    assert guard.check(user_key.secret).licence_id == "lic-test-2"


def test_slot_limits_and_usage(licensed) -> None:
    guard, _, user_key = licensed
    seat_id = user_key.info.seat_id
    guard.set_limits("root", seat_id, SeatLimits(max_concurrent=1, requests_per_minute=10))
    ctx = guard.check(user_key.secret)
    with guard.slot(ctx):
        with pytest.raises(RateLimited) as exc, guard.slot(ctx):
            pass
        assert exc.value.retry_after >= 1
    with guard.slot(ctx):
        guard.record_usage(ctx, route="/v1/chat/completions", model="smollm2", status=200,
                           tokens_in=3, tokens_out=4)  # fmt: skip
    assert guard.seats.usage_totals(seat_id)[0].tokens_out == 4


def test_cached_check_is_cheap(licensed) -> None:
    guard, _, user_key = licensed
    guard.refresh_interval = 60
    guard.check(user_key.secret)
    start = time.perf_counter()
    for _ in range(2000):
        guard.check(user_key.secret, "smollm2-135m-instruct", "chat")
    per_call = (time.perf_counter() - start) / 2000
    assert per_call < 1e-3, f"{per_call * 1e6:.0f} µs per check"  # ~3 µs when idle


def test_no_licence_refuses_inference(box, db, clock) -> None:
    guard = box()
    seat = guard.seats.create_seat("alice", max_seats=1)
    key = guard.seats.issue_key(seat.id).secret
    with pytest.raises(LicenceMissing):
        guard.check(key)
    assert guard.status().label == "UNLICENSED"


def test_licence_moved_to_other_machine_is_refused(licensed, facts) -> None:
    guard, _, user_key = licensed
    facts.facts.update(hostname="other", macs="00:11:22:33:44:55")
    guard.refresh(force=True)
    with pytest.raises(LicenceMissing, match="another machine"):
        guard.check(user_key.secret)


def test_deactivate_gives_receipt_and_blocks_reimport(licensed, licence_bytes) -> None:
    guard, _, user_key = licensed
    receipt = guard.deactivate("root")
    body = verify_receipt(receipt)
    assert body["licence_id"] == "lic-test-1"
    assert body["box_key"] == crypto.b64(guard.activation.box_key().public)
    with pytest.raises(LicenceMissing):
        guard.check(user_key.secret)
    with pytest.raises(LicenceDeactivated):
        guard.import_licence("root", licence_bytes(days=30, grace_days=7))


def test_import_rejects_foreign_licence(box, licence_bytes) -> None:
    guard = box()
    with pytest.raises(FingerprintMismatch):
        guard.import_licence(
            "root", licence_bytes(facts={"machine_id": "x", "cpu": "y", "macs": "z"})
        )
    assert not guard.activation.licence_path.exists()


def test_bootstrap_evaluation_creates_eval_and_admin_key(
    tmp_path, db, clock, mono, facts, trusted
) -> None:
    kw = {"trusted_keys": trusted, "clock": clock, "monotonic": mono, "facts": facts}
    data = tmp_path / "data"
    path = bootstrap_evaluation(data, db, **kw)
    assert path == data / "admin.key"
    assert path.stat().st_mode & 0o777 == 0o600 and data.stat().st_mode & 0o777 == 0o700
    # nothing about the evaluation is kept in the data directory: no key, no marker
    assert not {"eval.key", "eval.pub", "evaluation.json", "licence.json"} & {
        p.name for p in data.iterdir()}
    guard = LicenseGuard(data, db, **kw)
    st = guard.status()
    assert st.label == "EVALUATION" and st.licence.evaluation and st.licence.seats == 3
    assert st.licence.message.startswith("EVALUATION")
    admin_key = path.read_text().strip()
    ctx = guard.check(admin_key, "anything", "vision")
    assert ctx.evaluation and ctx.role == "admin" and ctx.days_left == 30
    # Second start: nothing new.
    assert bootstrap_evaluation(data, db, **kw) is None
    assert guard.seats.count_seats() == 1
    # An evaluation cannot be restarted: a third start finds the same one, same expiry.
    assert bootstrap_evaluation(data, db, **kw) is None
    again = LicenseGuard(data, db, **kw).status().licence
    assert (again.licence_id, again.expires_at) == (st.licence.licence_id, st.licence.expires_at)


def test_evaluation_expires_after_30_days(tmp_path, db, clock, mono, facts, trusted) -> None:
    kw = {"trusted_keys": trusted, "clock": clock, "monotonic": mono, "facts": facts}
    key = bootstrap_evaluation(tmp_path / "d", db, **kw).read_text().strip()
    clock.now = NOW + 30 * DAY
    guard = LicenseGuard(tmp_path / "d", open_box_db(tmp_path / "appliance.db"), **kw)
    with pytest.raises(LicenceExpired, match="evaluation licence eval-"):
        guard.check(key)


def test_egress_change_is_audited_and_reaches_the_seat_context(licensed) -> None:
    guard, _, user_key = licensed
    seat_id = user_key.info.seat_id
    guard.set_limits("root", seat_id, SeatLimits(max_concurrent=2))  # egress unchanged
    assert not [r for r in guard.audit.tail(50) if r.action == "seat.egress"]
    guard.set_limits("root", seat_id, SeatLimits(egress="llm"))
    rows = [r for r in guard.audit.tail(50) if r.action == "seat.egress"]
    assert [(r.actor, r.details["from"], r.details["to"]) for r in rows] == [
        ("root", "none", "llm")]
    assert guard.check(user_key.secret).limits.egress == "llm"  # the cache was dropped
    assert guard.audit.verify().ok

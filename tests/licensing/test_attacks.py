"""Issue 12: what a hostile seat holder or a customer with root tried, each as a test.

Every test reproduces the attack the review found (it passed on ``main``) and asserts the
box now refuses it. Real keys, real SQLite files, a real state directory in tmp.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import threading

import pytest

from licensing import crypto
from licensing.audit import row_hash
from licensing.errors import (
    ClockTampered,
    FormatError,
    KeyLimitReached,
    LicenceDeactivated,
    LicenceExpired,
    LicenceSuperseded,
    RateLimited,
    SignatureError,
    WeakFingerprint,
)
from licensing.fingerprint import Fingerprint
from licensing.guard import LicenseGuard, bootstrap_evaluation
from licensing.issuer import issue, parse_request
from licensing.seats import SeatLimits
from licensing.verify import sign_document
from tests.licensing.support import DAY, FACTS, NOW, SALT, make_request, open_box_db


@pytest.fixture
def kw(trusted, clock, mono, facts, tmp_path):
    return {"trusted_keys": trusted, "clock": clock, "monotonic": mono, "facts": facts,
            "refresh_interval": 0, "state_dir": tmp_path / "state"}  # fmt: skip


@pytest.fixture
def licensed(tmp_path, db, kw, licence_bytes):
    guard = LicenseGuard(tmp_path / "data", db, **kw)
    guard.import_licence("vendor", licence_bytes(days=30, grace_days=0))
    seat = guard.create_seat("test", "alice")
    return guard, guard.issue_key("test", seat.id).secret


# 3 ------------------------------------------------------------------------------------
def test_attack_3_clock_back_and_ack_does_not_revive_expired_licence(licensed, clock) -> None:
    guard, key = licensed
    clock.now = NOW + 31 * DAY  # day 31: expired
    with pytest.raises(LicenceExpired):
        guard.check(key)
    clock.now -= 30 * DAY  # set the clock back 30 days, then acknowledge
    guard.acknowledge_clock("root")
    with pytest.raises(LicenceExpired):
        guard.check(key)
    assert guard.status().licence.state == "expired"
    # and trusted time did not move back
    assert guard.status().trusted_time >= NOW + 31 * DAY


def test_attack_3_reimporting_the_same_activation_resets_nothing(
    licensed, clock, licence_bytes
) -> None:
    guard, key = licensed
    data = guard.activation.licence_path.read_bytes()
    clock.now = NOW + 31 * DAY
    guard.refresh(force=True)
    clock.now -= 30 * DAY
    guard.refresh(force=True)
    assert guard.status().clock_locked
    with pytest.raises(LicenceExpired):  # judged on trusted time, not the rolled-back clock
        guard.import_licence("root", data)
    assert guard.status().clock_locked  # still locked
    with pytest.raises(ClockTampered):
        guard.check(key)


# 4 ------------------------------------------------------------------------------------
def test_attack_4_deleting_data_dir_does_not_mint_a_new_evaluation(
    tmp_path, kw, clock
) -> None:
    data = tmp_path / "data"
    bootstrap_evaluation(data, open_box_db(tmp_path / "a.db"), **kw)
    first = LicenseGuard(data, open_box_db(tmp_path / "a.db"), **kw).status().licence
    assert first.evaluation and first.days_left == 30
    clock.now = NOW + 31 * DAY
    shutil.rmtree(data)  # licence, evaluation marker, eval.pub, database: all gone
    (tmp_path / "a.db").unlink()
    assert bootstrap_evaluation(data, open_box_db(tmp_path / "a.db"), **kw) is None
    again = LicenseGuard(data, open_box_db(tmp_path / "a.db"), **kw).status().licence
    assert again.state == "expired" and again.expires_at == first.expires_at


def test_attack_4_own_key_in_eval_pub_and_self_signed_evaluation_refused(
    tmp_path, db, kw
) -> None:
    data = tmp_path / "data"
    bootstrap_evaluation(data, db, **kw)
    mine = crypto.SigningKey.generate()
    (data / "eval.pub").write_text(crypto.b64(mine.public))
    guard = LicenseGuard(data, db, **kw)
    body = guard.activation.evaluation(guard.trust.load()).licence.to_json()
    body.update(kid=mine.key_id, licence_id="eval-mine", valid_from=NOW, expires_at=NOW + 20 * DAY,
                issued_at=NOW)  # fmt: skip
    with pytest.raises(SignatureError, match="unknown key id"):
        guard.import_licence("root", sign_document(body, "licence", mine))
    guard.activation.licence_path.write_bytes(sign_document(body, "licence", mine))
    guard.refresh(force=True)
    assert guard.status().licence.state == "missing"


def test_attack_4_vendor_sees_the_evaluation_start(tmp_path, db, kw) -> None:
    bootstrap_evaluation(tmp_path / "data", db, **kw)
    shutil.rmtree(tmp_path / "data")
    guard = LicenseGuard(tmp_path / "data2", open_box_db(tmp_path / "b.db"), **kw)
    req = guard.activation.make_request()
    assert req["evaluation_started_at"] == NOW
    parsed = parse_request(crypto.canonical_json(req))
    assert parsed.evaluation_started_at == NOW


# 5 ------------------------------------------------------------------------------------
def test_attack_5_hostname_only_request_refused_by_vendor_and_box(
    vendor_key, tmp_path, db, kw
) -> None:
    weak = make_request({"hostname": FACTS["hostname"]})
    with pytest.raises(WeakFingerprint, match="at least 3"):
        issue(weak, vendor_key, customer="x", seats=1, days=1, models="*", features="*",
              now=NOW)  # fmt: skip
    doc = {"format": "appliance-activation-request/1", "fingerprint": weak.fingerprint.to_json(),
           "box_key": weak.box_key, "nonce": weak.nonce, "created_at": NOW}  # fmt: skip
    with pytest.raises(WeakFingerprint):
        parse_request(crypto.canonical_json(doc))
    # a licence signed for a weak fingerprint anyway (old issuer) is refused by the box
    strong = issue(make_request(), vendor_key, customer="x", seats=1, days=9, models="*",
                   features="*", now=NOW, licence_id="lic-weak")  # fmt: skip
    body = json.loads(strong)["licence"]
    body["fingerprint"] = Fingerprint.from_facts({"hostname": FACTS["hostname"]}, SALT).to_json()
    guard = LicenseGuard(tmp_path / "data", db, **kw)
    with pytest.raises(WeakFingerprint):
        guard.import_licence("root", sign_document(body, "licence", vendor_key))


# 6 ------------------------------------------------------------------------------------
def test_attack_6_old_activation_copied_back_after_deactivate(licensed) -> None:
    guard, _ = licensed
    old = guard.activation.licence_path.read_bytes()
    guard.deactivate("root")
    guard.activation.licence_path.write_bytes(old)  # cp activation.json data/licence.json
    guard.refresh(force=True)
    assert guard.status().licence.state == "missing"
    assert "deactivated" in guard.status().licence.message
    with pytest.raises(LicenceDeactivated):
        guard.import_licence("root", old)
    shutil.rmtree(guard.data_dir / "receipts")  # the receipts folder was never the record
    with pytest.raises(LicenceDeactivated):
        guard.import_licence("root", old)


def test_attack_6_older_bigger_licence_after_renewal_refused(
    tmp_path, db, kw, licence_bytes
) -> None:
    guard = LicenseGuard(tmp_path / "data", db, **kw)
    fifty = licence_bytes(licence_id="lic-50", seats=50, now=NOW - 10 * DAY)
    five = licence_bytes(licence_id="lic-5", seats=5)
    guard.import_licence("root", fifty)
    guard.import_licence("root", five)
    with pytest.raises(LicenceSuperseded):
        guard.import_licence("root", fifty)
    guard.activation.licence_path.write_bytes(fifty)
    guard.refresh(force=True)
    assert guard.status().licence.state == "missing"
    # wiping the data directory and the database does not forget the renewal
    other = LicenseGuard(tmp_path / "fresh", open_box_db(tmp_path / "fresh.db"), **kw)
    with pytest.raises(LicenceSuperseded):
        other.import_licence("root", fifty)


# 8 ------------------------------------------------------------------------------------
def test_attack_8_parallel_requests_cannot_overrun_tokens_per_day(licensed) -> None:
    guard, key = licensed
    ctx = guard.check(key)
    seat = guard.set_limits("root", ctx.seat_id, SeatLimits(tokens_per_day=50))
    ctx = guard.check(key)
    assert ctx.limits == seat.limits
    held = []
    for _ in range(3):  # three parallel completions of 10 prompt + max_tokens 30
        with contextlib.suppress(RateLimited):
            held.append(guard.reserve(ctx, 10 + 30))
    assert len(held) == 1
    with pytest.raises(RateLimited, match="10 of its 50"):
        guard.reserve(ctx, 3964)  # one big embeddings request
    guard.record_usage(ctx, route="/v1/completions", model="m", status=200, tokens_in=10,
                       tokens_out=5, reservations=tuple(held))  # fmt: skip
    # no max_tokens: capped to what is left after the prompt
    res = guard.reserve(ctx, 10, optional=10_000)
    assert res.tokens == 35


def test_reservations_are_thread_safe(licensed) -> None:
    guard, key = licensed
    ctx = guard.check(key)
    guard.set_limits("root", ctx.seat_id, SeatLimits(tokens_per_day=100))
    ctx = guard.check(key)
    got: list[int] = []

    def take() -> None:
        with contextlib.suppress(RateLimited):
            got.append(guard.reserve(ctx, 30).tokens)

    threads = [threading.Thread(target=take) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(got) <= 100 and len(got) == 3


# 10 -----------------------------------------------------------------------------------
def test_attack_10_deleted_row_with_recomputed_links_detected(licensed, db) -> None:
    guard, _ = licensed
    for i in range(4):
        guard.audit.append("root", "seat.note", {"i": i})
    assert guard.audit.verify().ok
    rows = db.execute("SELECT id, ts, actor, action, details FROM audit_log ORDER BY id")
    rows = list(rows)
    db.execute("DELETE FROM audit_log")
    prev = "0" * 64
    for new_id, (_, ts, actor, action, text) in enumerate(
        [r for r in rows if r[0] != 3], start=1
    ):  # rewrite the chain without row 3, as the attacker did with plain SHA-256
        digest = row_hash(prev, new_id, ts, actor, action, json.loads(text))
        db.execute("INSERT INTO audit_log VALUES (?, ?, ?, ?, ?, ?, ?)",
                   [new_id, ts, actor, action, text, prev, digest])  # fmt: skip
        prev = digest
    report = guard.audit.verify()
    assert not report.ok


def test_attack_10_truncated_tail_detected(licensed, db) -> None:
    guard, _ = licensed
    guard.audit.append("root", "seat.note", {"i": 1})
    last = guard.audit.head()[0]
    db.execute("DELETE FROM audit_log WHERE id = ?", [last])
    report = guard.audit.verify()
    assert not report.ok and "missing" in report.reason


# 12 -----------------------------------------------------------------------------------
def test_attack_12_lone_surrogate_in_licence_is_a_format_error(licensed) -> None:
    guard, _ = licensed
    bad = guard.activation.licence_path.read_bytes().replace(b"ACME Corp", b"ACME \\ud800")
    with pytest.raises(FormatError, match="not valid Unicode"):
        guard.import_licence("root", bad)


def test_attack_12_seat_key_limit(licensed) -> None:
    guard, key = licensed
    seat_id = guard.check(key).seat_id
    second = guard.issue_key("root", seat_id)
    with pytest.raises(KeyLimitReached, match="limit is 2"):
        guard.issue_key("root", seat_id)
    guard.rotate_key("root", second.info.key_id)  # rotating stays within the limit
    guard.revoke_key("root", second.info.key_id)

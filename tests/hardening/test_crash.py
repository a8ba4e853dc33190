"""SIGKILL the real server during heavy writes of audit and usage rows, then check the data.

5 kills (HARDENING_FULL=1: 20) of the same box, restarted on the same data dir each time.
While it is killed, threads issue API keys through the admin API (each 201 = one new
``api_keys`` row and one ``key.issue`` audit row, committed before the answer is sent) and
call ``GET /v1/models`` with a user seat's key (each answered request = one ``usage`` row).

What "acknowledged" means:
- an audit row / key: the client got its 201 (the handler commits both before answering);
- a usage row: the request lifecycle commits it before the answer is sent (a stream,
  before its ``[DONE]``), so every answered request is acknowledged.

After each kill, before restarting: ``PRAGMA integrity_check`` is ok, the audit chain
verifies, every acknowledged key and its audit row are present, and the seat's usage rows
are at least the acknowledged count and at most the requests sent.
"""

from __future__ import annotations

import random
import sqlite3
import threading
import time

import httpx
import pytest
import sqlite_utils

from licensing.audit import AuditLog
from tests.conftest import Box
from tests.hardening.conftest import FULL, admin, linked_models, new_seat, start_box

pytestmark = pytest.mark.slow

KILLS = 20 if FULL else 5
KEY_WRITERS = 2
USAGE_WRITERS = 3


class Writers:
    """Threads writing through the API until told to stop (or the server dies)."""

    def __init__(self, box: Box, admin_seat: int, user_key: str) -> None:
        self.box, self.admin_seat, self.user_key = box, admin_seat, user_key
        self.stop = threading.Event()
        self.acked_keys: list[str] = []
        self.usage_sent = 0
        self.usage_answered: list[int] = []  # per connection
        self.lock = threading.Lock()
        self.threads = ([threading.Thread(target=self._keys) for _ in range(KEY_WRITERS)]
                        + [threading.Thread(target=self._usage, args=(i,))
                           for i in range(USAGE_WRITERS)])
        self.usage_answered = [0] * USAGE_WRITERS

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)

    def _keys(self) -> None:
        with httpx.Client(base_url=self.box.base_url, timeout=30, headers={
                "Authorization": f"Bearer {self.box.api_key}"}) as c:
            while not self.stop.is_set():
                try:
                    r = c.post(f"/admin/seats/{self.admin_seat}/keys")
                except httpx.HTTPError:
                    return
                assert r.status_code == 201, r.text
                with self.lock:
                    self.acked_keys.append(r.json()["id"])
                try:  # a seat holds few active keys (max_keys_per_seat); the row stays
                    c.post(f"/admin/keys/{r.json()['id']}/revoke")
                except httpx.HTTPError:
                    return

    def _usage(self, i: int) -> None:
        # One connection per thread (keep-alive), requests strictly one after another.
        with httpx.Client(base_url=self.box.base_url, timeout=30,
                          limits=httpx.Limits(max_connections=1), headers={
                              "Authorization": f"Bearer {self.user_key}"}) as c:
            while not self.stop.is_set():
                with self.lock:
                    self.usage_sent += 1
                try:
                    r = c.get("/v1/models")
                except httpx.HTTPError:
                    return
                assert r.status_code == 200, r.text
                self.usage_answered[i] += 1

    @property
    def usage_acked(self) -> int:
        return sum(self.usage_answered)


def _check(db_path, w: Writers, user_seat: int) -> dict:
    conn = sqlite3.connect(str(db_path), isolation_level=None)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        db = sqlite_utils.Database(conn)
        # the chain is keyed; the key lives in the box's state dir, outside data/ (tests.Box)
        key = (db_path.parent.parent / "state" / "audit.key").read_text().strip()
        report = AuditLog(db, key=bytes.fromhex(key)).verify()
        assert report.ok, report
        keys = {r[0] for r in conn.execute("SELECT id FROM api_keys")}
        missing = [k for k in w.acked_keys if k not in keys]
        assert not missing, f"acknowledged keys lost: {missing[:5]}"
        audited = {r[0] for r in conn.execute(
            "SELECT json_extract(details, '$.key_id') FROM audit_log WHERE action='key.issue'")}
        assert not [k for k in w.acked_keys if k not in audited], "acknowledged audit rows lost"
        usage = conn.execute("SELECT COUNT(*) FROM usage WHERE seat_id = ?",
                             [user_seat]).fetchone()[0]
        return {"usage": usage, "keys_without_audit": len(keys - audited),
                "audit_rows": report.rows}
    finally:
        conn.close()


def test_sigkill_during_writes_loses_nothing_acknowledged(
        model_store, tmp_path_factory, vendor_key) -> None:
    tmp = tmp_path_factory.mktemp("crash")
    models = linked_models(model_store.root, tmp / "models")
    env = {"APPLIANCE_MAX_KEYS_PER_SEAT": "100"}  # keys killed before their revoke stay
    box = start_box(tmp, models, vendor_key, env)
    db_path = box.data_dir / "appliance.db"
    rng = random.Random(20)
    try:
        user_seat, user_key = new_seat(box, "metered", max_concurrent=0,
                                       requests_per_minute=0, tokens_per_day=0)
        admin_seat = next(s["id"] for s in admin(box, "GET", "/admin/seats").json()
                          if s["role"] == "admin")
        all_acked_keys: list[str] = []
        usage_acked_total = usage_sent_total = 0
        for kill in range(KILLS):
            w = Writers(box, admin_seat, user_key)
            w.start()
            time.sleep(0.4 + rng.random() * 1.2)
            box.proc.kill()  # SIGKILL
            box.proc.wait(timeout=30)
            box._log.close()
            w.join()
            all_acked_keys += w.acked_keys
            usage_acked_total += w.usage_acked
            usage_sent_total += w.usage_sent
            w.acked_keys = all_acked_keys
            seen = _check(db_path, w, user_seat)
            assert usage_acked_total <= seen["usage"] <= usage_sent_total, (
                kill, usage_acked_total, seen, usage_sent_total)
            # Not even an unacknowledged key may exist without its audit row.
            assert seen["keys_without_audit"] == 0, seen
            print(f"kill {kill + 1}: keys acked {len(all_acked_keys)}, usage acked "
                  f"{usage_acked_total} / rows {seen['usage']} / sent {usage_sent_total}, "
                  f"audit rows {seen['audit_rows']}, keys without audit row "
                  f"{seen['keys_without_audit']}")
            box = start_box(tmp, models, vendor_key, env)
            assert httpx.get(box.base_url + "/readyz", timeout=30).status_code == 200
        assert len(all_acked_keys) > KILLS and usage_acked_total > KILLS
        # The box serves on after the last restart, and its own view of the chain agrees.
        chain = admin(box, "GET", "/admin/audit?limit=1").json()
        assert chain["chain_ok"] is True, {k: chain[k] for k in ("chain_rows", "bad_id",
                                                                 "reason")}
    finally:
        if box.proc.poll() is None:
            box.stop()

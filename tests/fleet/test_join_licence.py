"""The head admits a box under the fleet licence, or refuses it naming why: the real
LicenseGuard over a real database, real box keys and this machine's fingerprint, the join
request a joining box makes. No Ray (the licence is checked before a node starts)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from fleet.admission import admit, check_token, make_join_request
from fleet.errors import JoinRefusedError
from fleet.token import new_token, write_token
from licensing import crypto
from licensing.activation import Activation
from licensing.guard import LicenseGuard
from licensing.issuer import issue, parse_request
from licensing.trust import TrustStore
from tests.licensing.support import FACTS, Facts, open_box_db

#: every box of this loopback fleet runs on one (test) machine: their salts tell them apart
facts = Facts(FACTS)


def join(data: Path, box: str) -> bytes:
    return make_join_request(data, box, facts)


def request_of(data: Path, state: Path):
    """``appliance-license request`` on a box: its box key, salt and activation request."""
    act = Activation(data, {}, facts=facts, trust=TrustStore(state, facts))
    return parse_request(crypto.canonical_json(act.make_request()))


@pytest.fixture
def head(tmp_path: Path):
    """A head whose fleet licence lists box ``b`` (not ``c``) and allows 3 boxes in all."""
    vendor = crypto.SigningKey.generate()
    head_dir, state = tmp_path / "head", tmp_path / "state"
    boxes = {name: tmp_path / name for name in ("b", "c", "d")}
    licence = issue(request_of(head_dir, state), vendor, customer="ACME", seats=5, days=30,
                    models="*", features="*", now=int(time.time()),
                    licence_id="lic-fleet", boxes=[request_of(boxes["b"], state)],
                    max_boxes=3)
    for name in ("c", "d"):
        request_of(boxes[name], state)  # their keys exist, but the licence does not name them
    db = open_box_db(tmp_path / "appliance.db")
    guard = LicenseGuard(head_dir, db, trusted_keys={vendor.key_id: vendor.public},
                         state_dir=state, facts=facts)
    guard.import_licence("vendor", licence)
    token = new_token()
    yield guard, write_token(head_dir / "fleet" / "join.token", token), token, boxes
    db.conn.close()


def test_listed_box_is_admitted_and_audited(head) -> None:
    guard, token_file, token, boxes = head
    answer = admit(guard, token_file, f"Bearer {token}", join(boxes["b"], "b"))
    assert answer["admitted"] == "listed" and answer["licence_id"] == "lic-fleet"
    assert answer["seats"] == 5  # one seat total for the whole fleet
    actions = [row.action for row in guard.audit.tail()]
    assert "fleet.join" in actions


def test_a_box_count_binds_one_more_box_then_refuses(head) -> None:
    guard, token_file, token, boxes = head
    first = admit(guard, token_file, f"Bearer {token}", join(boxes["c"], "c"))
    assert first["admitted"] == "new"
    assert guard.fleet_boxes.names("lic-fleet") == ["c"]
    again = admit(guard, token_file, f"Bearer {token}", join(boxes["c"], "c"))
    assert again["admitted"] == "bound"
    with pytest.raises(JoinRefusedError, match="allows 3 boxes and all are bound"):
        admit(guard, token_file, f"Bearer {token}", join(boxes["d"], "d"))
    assert "fleet.join_refused" in [row.action for row in guard.audit.tail()]


def test_no_token_or_a_wrong_token_is_refused_before_the_licence(head, tmp_path) -> None:
    guard, token_file, _, boxes = head
    request = join(boxes["b"], "b")
    with pytest.raises(JoinRefusedError, match="needs the fleet token"):
        admit(guard, token_file, "", request)
    with pytest.raises(JoinRefusedError, match="wrong fleet token"):
        admit(guard, token_file, f"Bearer {new_token()}", request)
    with pytest.raises(JoinRefusedError, match="not a fleet head"):
        check_token(tmp_path / "nowhere.token", new_token())


def test_a_box_without_a_box_key_cannot_ask(tmp_path) -> None:
    with pytest.raises(JoinRefusedError, match="appliance-license request"):
        make_join_request(tmp_path / "fresh", "e", facts)

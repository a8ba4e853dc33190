"""A licence for a fleet: issued from one request naming every box, verified on the head,
and deciding which boxes may join (listed, bound to a box count, or refused)."""

from __future__ import annotations

import pytest

from licensing import crypto
from licensing.errors import BoxNotLicensed, FormatError, InvalidInput, SignatureError
from licensing.fingerprint import Fingerprint
from licensing.fleet import BoxIdentity, admit_box, join_request, verify_join
from licensing.issuer import ActivationRequest, FleetRequest, issue, parse_any_request
from licensing.model import FLEET_REQUEST_FORMAT, REQUEST_FORMAT, Licence, Limits
from licensing.verify import sign_document, split_signed, verify_licence
from tests.licensing.support import FACTS, NOW, SALT

SALT_B, SALT_C = "b" * 32, "c" * 32
FACTS_B = {**FACTS, "machine_id": "machine-b", "macs": "3c:ec:ef:0b:0b:0b", "hostname": "b"}
FACTS_C = {**FACTS, "machine_id": "machine-c", "macs": "3c:ec:ef:0c:0c:0c", "hostname": "c"}


class Box:
    """One machine of the fleet: its facts, salt and own box key."""

    def __init__(self, facts: dict[str, str], salt: str) -> None:
        self.facts, self.salt = facts, salt
        self.key = crypto.SigningKey.generate()

    @property
    def fingerprint(self) -> Fingerprint:
        return Fingerprint.from_facts(self.facts, self.salt)

    def request(self) -> ActivationRequest:
        return ActivationRequest(self.fingerprint, crypto.b64(self.key.public), "ab" * 16, NOW)

    def request_json(self) -> dict:
        return {"format": REQUEST_FORMAT, "fingerprint": self.fingerprint.to_json(),
                "box_key": crypto.b64(self.key.public), "nonce": "cd" * 16,
                "created_at": NOW}

    def join(self, name: str, now: int = NOW, facts: dict[str, str] | None = None):
        fp = Fingerprint.from_facts(facts or self.facts, self.salt)
        return verify_join(join_request(name, fp, self.key, now), NOW)


@pytest.fixture
def fleet() -> dict[str, Box]:
    return {"head": Box(FACTS, SALT), "b": Box(FACTS_B, SALT_B), "c": Box(FACTS_C, SALT_C),
            "d": Box({**FACTS, "machine_id": "machine-d", "macs": "3c:ec:ef:0d:0d:0d"},
                     "d" * 32)}


def fleet_licence(vendor_key, trusted, fleet, *, boxes=("b",), max_boxes=0) -> Licence:
    data = issue(fleet["head"].request(), vendor_key, customer="ACME", seats=10, days=365,
                 models="*", features="*", now=NOW, licence_id="lic-fleet",
                 boxes=[fleet[b].request() for b in boxes], max_boxes=max_boxes)
    return verify_licence(data, trusted=trusted, facts=FACTS, now=NOW).licence


def test_fleet_licence_verifies_on_the_head_and_keeps_its_boxes(vendor_key, trusted,
                                                                 fleet) -> None:
    lic = fleet_licence(vendor_key, trusted, fleet, max_boxes=3)
    assert lic.fleet_size == 3 and lic.seats == 10
    assert [b["box_key"] for b in lic.boxes] == [crypto.b64(fleet["b"].key.public)]
    # the signed body round-trips exactly (a verifier re-serialises nothing it dropped)
    data = issue(fleet["head"].request(), vendor_key, customer="ACME", seats=10, days=365,
                 models="*", features="*", now=NOW, serial=7,
                 boxes=[fleet["b"].request()], max_boxes=3)
    body, _ = split_signed(data, "licence", Limits())
    assert Licence.from_json(body).to_json() == body


def test_a_single_box_licence_has_no_fleet_fields(licence_bytes, trusted) -> None:
    lic = verify_licence(licence_bytes(), trusted=trusted, facts=FACTS, now=NOW).licence
    assert lic.fleet_size == 1 and "boxes" not in lic.to_json()
    assert "max_boxes" not in lic.to_json()


def test_listed_box_joins_and_an_unlisted_one_is_refused(vendor_key, trusted, fleet) -> None:
    lic = fleet_licence(vendor_key, trusted, fleet)
    ok = admit_box(lic, fleet["b"].join("b"), [])
    assert ok.how == "listed" and not ok.bind
    with pytest.raises(BoxNotLicensed, match="lic-fleet does not list c"):
        admit_box(lic, fleet["c"].join("c"), [])


def test_a_box_count_binds_the_first_boxes_to_join(vendor_key, trusted, fleet) -> None:
    lic = fleet_licence(vendor_key, trusted, fleet, max_boxes=3)
    c = fleet["c"].join("c")
    first = admit_box(lic, c, [])
    assert first.how == "new" and first.bind
    bound = [c.identity]
    assert admit_box(lic, fleet["c"].join("c"), bound).how == "bound"  # rejoins freely
    with pytest.raises(BoxNotLicensed, match="allows 3 boxes and all are bound"):
        admit_box(lic, fleet["d"].join("d"), bound)


def test_a_box_key_copied_to_another_machine_is_refused(vendor_key, trusted, fleet) -> None:
    lic = fleet_licence(vendor_key, trusted, fleet)
    b = fleet["b"]
    renamed = {**b.facts, "hostname": "b-renamed"}  # one changed component: tolerated
    assert admit_box(lic, b.join("b", facts=renamed), []).how == "listed"
    elsewhere = {**FACTS_C, "hostname": "b"}  # b's key on c's machine
    with pytest.raises(BoxNotLicensed, match="runs on another machine"):
        admit_box(lic, b.join("b", facts=elsewhere), [])
    # nor does b's fingerprint help a box without b's key
    forged = verify_join(join_request("b", b.fingerprint, fleet["c"].key, NOW), NOW)
    with pytest.raises(BoxNotLicensed, match="does not list b"):
        admit_box(lic, forged, [])


def test_single_box_and_evaluation_licences_let_no_box_join(licence_bytes, trusted,
                                                            fleet) -> None:
    lic = verify_licence(licence_bytes(), trusted=trusted, facts=FACTS, now=NOW).licence
    with pytest.raises(BoxNotLicensed, match="covers one box"):
        admit_box(lic, fleet["b"].join("b"), [])
    evaluation = Licence(**{**lic.__dict__, "evaluation": True})
    with pytest.raises(BoxNotLicensed, match="evaluation licence covers one box"):
        admit_box(evaluation, fleet["b"].join("b"), [])


def test_the_head_does_not_join_itself(vendor_key, trusted, fleet) -> None:
    lic = fleet_licence(vendor_key, trusted, fleet, max_boxes=4)
    with pytest.raises(BoxNotLicensed, match="head's own box key"):
        admit_box(lic, fleet["head"].join("head"), [])


def test_join_requests_are_signed_fresh_and_well_formed(fleet) -> None:
    b = fleet["b"]
    data = join_request("b", b.fingerprint, b.key, NOW)
    claim = verify_join(data, NOW + 60)
    assert claim.box == "b" and claim.identity == BoxIdentity(b.fingerprint,
                                                              crypto.b64(b.key.public))
    with pytest.raises(SignatureError):
        verify_join(data.replace(b'"box":"b"', b'"box":"x"'), NOW)
    with pytest.raises(BoxNotLicensed, match="make a new one"):
        verify_join(data, NOW + 3600)
    with pytest.raises(FormatError, match="box name"):
        join_request("no spaces", b.fingerprint, b.key, NOW)


def test_one_request_file_names_every_box(vendor_key, fleet) -> None:
    doc = {"format": FLEET_REQUEST_FORMAT, "head": fleet["head"].request_json(),
           "boxes": [fleet["b"].request_json(), fleet["c"].request_json()]}
    parsed = parse_any_request(crypto.canonical_json(doc))
    assert isinstance(parsed, FleetRequest) and len(parsed.boxes) == 2
    assert parsed.boxes[1].box_key == crypto.b64(fleet["c"].key.public)
    single = parse_any_request(crypto.canonical_json(fleet["b"].request_json()))
    assert isinstance(single, ActivationRequest)
    twice = {**doc, "boxes": [fleet["b"].request_json(), fleet["b"].request_json()]}
    with pytest.raises(FormatError, match="names one box twice"):
        parse_any_request(crypto.canonical_json(twice))
    with pytest.raises(FormatError, match="boxes lists"):
        parse_any_request(crypto.canonical_json({**doc, "boxes": []}))
    with pytest.raises(InvalidInput, match="boxes must be 3"):
        issue(parsed.head, vendor_key, customer="ACME", seats=1, days=1, models="*",
              features="*", now=NOW, boxes=parsed.boxes, max_boxes=2)


def test_a_licence_listing_a_weak_or_duplicate_box_is_refused(vendor_key, trusted,
                                                              fleet) -> None:
    data = issue(fleet["head"].request(), vendor_key, customer="ACME", seats=1, days=30,
                 models="*", features="*", now=NOW, boxes=[fleet["b"].request()])
    body, _ = split_signed(data, "licence", Limits())
    weak = {"salt": SALT_B, "components": {"hostname": "0" * 64, "cpu": "1" * 64,
                                           "macs": "2" * 64}}
    bad = {**body, "boxes": [{"fingerprint": weak, "box_key": body["boxes"][0]["box_key"]}]}
    with pytest.raises(FormatError, match="fingerprint has 3 component"):
        verify_licence(sign_document(bad, "licence", vendor_key), trusted=trusted,
                       facts=FACTS, now=NOW)
    dup = {**body, "boxes": body["boxes"] * 2}
    with pytest.raises(FormatError, match="listed twice"):
        verify_licence(sign_document(dup, "licence", vendor_key), trusted=trusted,
                       facts=FACTS, now=NOW)

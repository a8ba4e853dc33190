"""Pure licence verification: tampering, keys, fingerprints, time windows, file limits."""

from __future__ import annotations

import json
import random

import pytest

from licensing import crypto
from licensing.errors import (
    FingerprintMismatch,
    FormatError,
    LicenceExpired,
    LicenceNotYetValid,
    LicenseError,
    SignatureError,
)
from licensing.model import Limits, load_json
from licensing.verify import EXPIRED, GRACE, VALID, sign_document, status_of, verify_licence
from tests.licensing.support import DAY, FACTS, NOW


def verify(data: bytes, trusted, facts=FACTS, now=NOW, **kw):
    return verify_licence(data, trusted=trusted, facts=facts, now=now, **kw)


def test_valid_licence_verifies(licence_bytes, trusted) -> None:
    v = verify(licence_bytes(), trusted)
    assert v.licence.licence_id == "lic-test-1"
    assert v.licence.seats == 3
    assert v.licence.entitlements.allows_model("smollm2-135m-instruct")
    assert not v.licence.entitlements.allows_model("gemma3-270m")
    assert v.licence.entitlements.allows_feature("ocr")
    assert not v.licence.entitlements.allows_feature("embeddings")
    assert v.fingerprint.ok and not v.fingerprint.changed


def test_every_sampled_single_byte_flip_is_rejected(licence_bytes, trusted) -> None:
    data = licence_bytes()
    rng = random.Random(1234)
    positions = sorted(set(rng.sample(range(len(data)), 300)) | {0, len(data) - 2})
    kinds: set[type] = set()
    for pos in positions:
        for mask in (0x01, 0x20, 0x80):
            bad = bytearray(data)
            bad[pos] ^= mask
            if bytes(bad).strip() == data.strip():
                continue  # only the trailing newline changed to other whitespace
            with pytest.raises((FormatError, SignatureError)) as exc:
                verify(bytes(bad), trusted)
            kinds.add(type(exc.value))
    assert kinds == {FormatError, SignatureError}


def test_wrong_key_rejected(licence_bytes, trusted) -> None:
    impostor = crypto.SigningKey.generate()
    # Same key id as the vendor's but a different key: the signature cannot verify.
    doc = json.loads(licence_bytes(key=impostor))
    vendor_kid = next(iter(trusted))
    doc["licence"]["kid"] = vendor_kid
    doc["signature"] = {
        "kid": vendor_kid,
        "alg": "ed25519",
        "sig": impostor.sign(crypto.canonical_json(doc["licence"])),
    }
    with pytest.raises(SignatureError, match="does not verify"):
        verify(crypto.canonical_json(doc), trusted)


def test_unknown_key_id_rejected(licence_bytes, trusted) -> None:
    with pytest.raises(SignatureError, match="unknown key id"):
        verify(licence_bytes(key=crypto.SigningKey.generate()), trusted)


def test_unknown_algorithm_rejected(licence_bytes, trusted) -> None:
    doc = json.loads(licence_bytes())
    doc["signature"]["alg"] = "rsa-pss"
    with pytest.raises(SignatureError, match="algorithm"):
        verify(crypto.canonical_json(doc), trusted)


def test_foreign_fingerprint_rejected(licence_bytes, trusted) -> None:
    other = {k: v + "-other" for k, v in FACTS.items()}
    with pytest.raises(FingerprintMismatch, match="another machine"):
        verify(licence_bytes(facts=other), trusted)


def test_one_changed_component_tolerated_two_rejected(licence_bytes, trusted) -> None:
    data = licence_bytes()
    new_nic = {**FACTS, "macs": "3c:ec:ef:99:99:99,3c:ec:ef:01:02:04"}
    v = verify(data, trusted, facts=new_nic)
    assert v.fingerprint.ok and v.fingerprint.changed == ("macs",)
    assert "tolerated" in v.fingerprint.describe()
    with pytest.raises(FingerprintMismatch, match="hostname, macs"):
        verify(data, trusted, facts={**new_nic, "hostname": "renamed"})


def test_missing_fact_counts_as_changed(licence_bytes, trusted) -> None:
    facts = {k: v for k, v in FACTS.items() if k != "machine_id"}
    assert verify(licence_bytes(), trusted, facts=facts).fingerprint.changed == ("machine_id",)
    facts.pop("cpu")
    with pytest.raises(FingerprintMismatch):
        verify(licence_bytes(), trusted, facts=facts)


def test_three_component_fingerprint_tolerates_one_change(licence_bytes, trusted) -> None:
    small = {k: FACTS[k] for k in ("machine_id", "macs", "cpu")}
    data = licence_bytes(facts=small)
    assert verify(data, trusted, facts=small).fingerprint.ok
    assert verify(data, trusted, facts={**small, "cpu": "other"}).fingerprint.ok
    with pytest.raises(FingerprintMismatch):
        verify(data, trusted, facts={**small, "cpu": "other", "macs": "x"})


def test_expired_term_rejected_with_licence_id(licence_bytes, trusted) -> None:
    data = licence_bytes(days=10, grace_days=2)
    with pytest.raises(LicenceExpired, match="lic-test-1") as exc:
        verify(data, trusted, now=NOW + 12 * DAY)
    assert exc.value.licence_id == "lic-test-1"
    # Status display may still load it.
    assert verify(data, trusted, now=NOW + 12 * DAY, allow_expired=True).licence.seats == 3


def test_not_yet_valid_rejected(licence_bytes, trusted) -> None:
    with pytest.raises(LicenceNotYetValid):
        verify(licence_bytes(), trusted, now=NOW - 2 * DAY)


def test_valid_grace_expired_exact_boundaries(licence_bytes, trusted) -> None:
    lic = verify(licence_bytes(days=30, grace_days=7), trusted).licence
    assert lic.expires_at == NOW + 30 * DAY and lic.grace_ends_at == NOW + 37 * DAY
    before = status_of(lic, lic.expires_at - 1)
    assert (before.state, before.days_left, before.label) == (VALID, 1, "LICENSED")
    at_expiry = status_of(lic, lic.expires_at)
    assert (at_expiry.state, at_expiry.grace_days_left, at_expiry.label) == (GRACE, 7, "GRACE")
    assert at_expiry.serves_inference
    last = status_of(lic, lic.grace_ends_at - 1)
    assert (last.state, last.grace_days_left) == (GRACE, 1)
    gone = status_of(lic, lic.grace_ends_at)
    assert gone.state == EXPIRED and not gone.serves_inference
    assert "lic-test-1" in gone.message


def test_evaluation_key_only_for_evaluation_licences(licence_bytes, trusted) -> None:
    eval_key = crypto.SigningKey.generate()
    eval_keys = {eval_key.key_id: eval_key.public}
    ok = licence_bytes(key=eval_key, evaluation=True, days=20, grace_days=0, seats=3)
    v = verify(ok, trusted, eval_keys=eval_keys)
    assert v.licence.evaluation and status_of(v.licence, NOW).label == "EVALUATION"
    with pytest.raises(SignatureError, match="only sign evaluation"):
        verify(licence_bytes(key=eval_key), trusted, eval_keys=eval_keys)
    with pytest.raises(SignatureError, match="at most 3 seats"):
        verify(licence_bytes(key=eval_key, evaluation=True, seats=10, grace_days=0, days=20),
               trusted, eval_keys=eval_keys)  # fmt: skip
    with pytest.raises(SignatureError, match="at most 30 days"):
        verify(licence_bytes(key=eval_key, evaluation=True, days=365, grace_days=0),
               trusted, eval_keys=eval_keys)  # fmt: skip


def test_extra_signed_field_rejected(vendor_key, trusted, licence_bytes) -> None:
    body = json.loads(licence_bytes())["licence"]
    body["unlimited"] = True
    with pytest.raises(FormatError, match="unknown field"):
        verify(sign_document(body, "licence", vendor_key), trusted)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not valid JSON"),
        (b'{"licence": {"format": "appl', "not valid JSON"),
        (b"[1, 2, 3]", "must be a JSON object"),
        (b'{"a": 1, "a": 2}', "duplicate"),
        (b'{"x":' * 50 + b"1" + b"}" * 50, "nested deeper"),
        (b"[" * 50_000 + b"]" * 50_000, "limit"),
        (b"\xff\xfe{}", "not valid JSON"),
    ],
)
def test_malformed_documents_rejected(data: bytes, message: str, trusted) -> None:
    with pytest.raises(FormatError, match=message):
        verify(data, trusted)


def test_recursion_bomb_within_size_limit() -> None:
    with pytest.raises(FormatError):
        load_json(b"[" * 100_000 + b"]" * 100_000, Limits(max_bytes=1_000_000))


def test_every_error_is_a_license_error() -> None:
    import licensing.errors as errors

    for name in dir(errors):
        obj = getattr(errors, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, LicenseError), name

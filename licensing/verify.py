"""Pure licence verification: bytes + trusted keys + machine facts + ``now`` -> Licence.

Nothing here touches disk or clocks. Order of checks (first failure wins):
format (size, depth, JSON, fields) -> signature (algorithm, trusted key id, signature
bytes) -> evaluation limits -> fingerprint strength -> machine fingerprint -> a fleet
licence's boxes (strong fingerprints, distinct keys) -> time window.
``check_current`` then compares a verified licence with the trusted record (newest seen,
deactivated here); the caller passes that record in.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from licensing import crypto
from licensing.errors import (
    FormatError,
    LicenceDeactivated,
    LicenceExpired,
    LicenceNotYetValid,
    LicenceSuperseded,
    SignatureError,
)
from licensing.fingerprint import Fingerprint, FingerprintMatch, check_strength, require_match
from licensing.model import DAY, RECEIPT_FORMAT, Licence, Limits, check_keys, load_json

VALID, GRACE, EXPIRED, NOT_YET_VALID, MISSING = (
    "valid", "grace", "expired", "not_yet_valid", "missing"
)  # fmt: skip


def split_signed(data: bytes, body_key: str, limits: Limits) -> tuple[dict[str, Any], dict]:
    """Parse ``{body_key: {...}, "signature": {...}}``; FormatError if malformed."""
    doc = load_json(data, limits, what=body_key)
    check_keys(doc, {body_key, "signature"}, body_key)
    body, sig = doc.get(body_key), doc.get("signature")
    if not isinstance(body, dict) or not isinstance(sig, dict):
        raise FormatError(f"{body_key}: expected objects {body_key!r} and 'signature'")
    if set(sig) != {"kid", "alg", "sig"} or not all(isinstance(v, str) for v in sig.values()):
        raise FormatError(f"{body_key}: signature must have string fields kid, alg, sig")
    return body, sig


def check_signature(
    body: dict[str, Any], sig: dict[str, str], trusted: Mapping[str, bytes]
) -> None:
    """Verify ``sig`` over ``canonical_json(body)``; the encoding must itself be canonical."""
    raw = crypto.unb64(sig["sig"])
    if len(raw) != 64 or crypto.b64(raw) != sig["sig"]:
        raise SignatureError("signature is not a canonical 64-byte Ed25519 signature")
    crypto.verify_signature(
        crypto.canonical_json(body), sig["sig"], sig["kid"], sig["alg"], trusted
    )


def sign_document(body: dict[str, Any], body_key: str, key: crypto.SigningKey) -> bytes:
    """Signed JSON document for ``body`` (used by the issuer, the box and tests)."""
    signature = {
        "kid": key.key_id,
        "alg": crypto.ALGORITHM,
        "sig": key.sign(crypto.canonical_json(body)),
    }
    return crypto.canonical_json({body_key: body, "signature": signature}) + b"\n"


@dataclass(frozen=True)
class VerifiedLicence:
    """A licence whose signature, limits and fingerprint were checked."""

    licence: Licence
    fingerprint: FingerprintMatch


def verify_licence(
    data: bytes,
    *,
    trusted: Mapping[str, bytes],
    facts: Mapping[str, str],
    now: int,
    eval_keys: Mapping[str, bytes] | None = None,
    limits: Limits = Limits(),
    allow_expired: bool = False,
) -> VerifiedLicence:
    """Verify a licence file's bytes for this machine at ``now``.

    ``trusted`` are vendor keys (any licence); ``eval_keys`` are this box's evaluation
    keys, accepted only for licences marked evaluation within the evaluation limits.
    Raises FormatError, SignatureError, FingerprintMismatch, LicenceNotYetValid, or
    LicenceExpired (past grace). ``allow_expired`` skips both time checks, so that the
    installed licence can still be loaded and shown; callers then use ``licence_state``.
    """
    body, sig = split_signed(data, "licence", limits)
    eval_keys = eval_keys or {}
    kid = sig["kid"]
    if kid in trusted:
        check_signature(body, sig, trusted)
    elif kid in eval_keys:
        check_signature(body, sig, eval_keys)
    else:
        check_signature(body, sig, {})  # raises: unknown key id
    licence = Licence.from_json(body, limits)
    if licence.kid != kid:
        raise SignatureError("licence names a different key id than its signature")
    if kid not in trusted:
        check_evaluation(licence, limits)
    fp = require_match(check_strength(Fingerprint.from_json(licence.fingerprint)), facts)
    check_fleet(licence)
    status = licence_state(licence, now)
    if status == NOT_YET_VALID and not allow_expired:
        raise LicenceNotYetValid(
            f"licence {licence.licence_id} is not valid before {licence.valid_from}"
        )
    if status == EXPIRED and not allow_expired:
        raise LicenceExpired(licence.licence_id, expired_message(licence))
    return VerifiedLicence(licence=licence, fingerprint=fp)


def check_current(
    licence: Licence, newest: tuple[int, int], deactivated: Collection[str]
) -> None:
    """Refuse a licence deactivated on this box, or older than the newest one installed."""
    if licence.licence_id in deactivated:
        raise LicenceDeactivated(
            f"licence {licence.licence_id} was deactivated on this box; ask the vendor for a "
            "new activation"
        )
    if licence.order < newest:
        raise LicenceSuperseded(
            f"licence {licence.licence_id} (issued {licence.issued_at}) is older than a licence "
            "this box already installed; import the newest activation from the vendor"
        )


def check_fleet(licence: Licence) -> None:
    """Every box a fleet licence lists has a strong fingerprint and an Ed25519 box key,
    and no box is listed twice (nor the head among them)."""
    keys = {licence.box_key}
    for box in licence.boxes:
        check_strength(Fingerprint.from_json(box["fingerprint"]))
        if len(crypto.unb64(box["box_key"])) != 32:
            raise FormatError("licence: a box_key in boxes is not an Ed25519 public key")
        if box["box_key"] in keys:
            raise FormatError("licence: a box is listed twice in boxes (or is the head)")
        keys.add(box["box_key"])


def check_evaluation(licence: Licence, limits: Limits) -> None:
    """A box-signed licence must be an evaluation within the evaluation limits."""
    if not licence.evaluation:
        raise SignatureError("the local evaluation key may only sign evaluation licences")
    if licence.fleet_size > 1:
        raise SignatureError("evaluation licences cover one box, never a fleet")
    if licence.seats > limits.eval_max_seats:
        raise SignatureError(f"evaluation licences allow at most {limits.eval_max_seats} seats")
    if licence.grace_ends_at - licence.valid_from > limits.eval_max_days * DAY:
        raise SignatureError(f"evaluation licences last at most {limits.eval_max_days} days")


def licence_state(licence: Licence, now: int) -> str:
    """valid in [valid_from, expires_at); grace in [expires_at, grace_ends_at); then expired."""
    if now < licence.valid_from:
        return NOT_YET_VALID
    if now < licence.expires_at:
        return VALID
    if now < licence.grace_ends_at:
        return GRACE
    return EXPIRED


def expired_message(licence: Licence) -> str:
    kind = "evaluation licence" if licence.evaluation else "licence"
    return (
        f"{kind} {licence.licence_id} for {licence.customer!r} expired and its "
        f"{licence.grace_days}-day grace period is over; inference is disabled until a new "
        "licence is imported"
    )


@dataclass(frozen=True)
class LicenceStatus:
    """What the API, TUI, logs and CLI show about the installed licence."""

    state: str
    evaluation: bool
    licence_id: str = ""
    customer: str = ""
    seats: int = 0
    models: tuple[str, ...] = ()
    features: tuple[str, ...] = ()
    valid_from: int = 0
    expires_at: int = 0
    grace_ends_at: int = 0
    days_left: int = 0
    grace_days_left: int = 0
    fingerprint: str = ""
    message: str = ""

    @property
    def label(self) -> str:
        """Short banner text: 'EVALUATION', 'GRACE', 'EXPIRED', 'LICENSED' or 'UNLICENSED'."""
        if self.state == MISSING:
            return "UNLICENSED"
        if self.state in (EXPIRED, NOT_YET_VALID):
            return "EXPIRED" if self.state == EXPIRED else "NOT YET VALID"
        if self.evaluation:
            return "EVALUATION" if self.state == VALID else "EVALUATION (GRACE)"
        return "GRACE" if self.state == GRACE else "LICENSED"

    @property
    def serves_inference(self) -> bool:
        return self.state in (VALID, GRACE)

    def to_json(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["models"], d["features"] = list(self.models), list(self.features)
        d["label"] = self.label
        return d


def status_of(licence: Licence | None, now: int, fingerprint: str = "") -> LicenceStatus:
    """Status for ``licence`` at ``now`` (``None`` -> missing); pure."""
    if licence is None:
        return LicenceStatus(state=MISSING, evaluation=False, message="no licence installed")
    state = licence_state(licence, now)
    days_left = max(0, math.ceil((licence.expires_at - now) / DAY))
    grace_left = max(0, math.ceil((licence.grace_ends_at - max(now, licence.expires_at)) / DAY))
    if state == VALID:
        msg = f"valid for {days_left} more day(s)"
    elif state == GRACE:
        msg = f"expired; {grace_left} day(s) of grace left — renew the licence"
    elif state == EXPIRED:
        msg, grace_left = expired_message(licence), 0
    else:
        msg = "licence is not valid yet"
    if licence.evaluation:
        msg = f"EVALUATION: {msg}"
    return LicenceStatus(
        state=state,
        evaluation=licence.evaluation,
        licence_id=licence.licence_id,
        customer=licence.customer,
        seats=licence.seats,
        models=licence.entitlements.models,
        features=licence.entitlements.features,
        valid_from=licence.valid_from,
        expires_at=licence.expires_at,
        grace_ends_at=licence.grace_ends_at,
        days_left=days_left,
        grace_days_left=grace_left,
        fingerprint=fingerprint,
        message=msg,
    )


def verify_receipt(data: bytes, limits: Limits = Limits()) -> dict[str, Any]:
    """Check a deactivation receipt against the box key it names; return its body.

    The vendor then compares ``box_key`` with the one recorded in the licence it issued:
    only the box holding that key can have produced the receipt.
    """
    body, sig = split_signed(data, "receipt", limits)
    if body.get("format") != RECEIPT_FORMAT or not isinstance(body.get("box_key"), str):
        raise FormatError("not a deactivation receipt")
    raw = crypto.unb64(body["box_key"])
    if len(raw) != 32:
        raise FormatError("receipt box_key is not an Ed25519 public key")
    check_signature(body, sig, {crypto.key_id(raw): raw})
    return body

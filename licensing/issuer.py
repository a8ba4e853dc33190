"""Vendor side: key generation, reading activation requests, issuing licences, inspecting.

Private keys are written only where the vendor points ``keygen`` (mode 0600 in a 0700
directory), never into the package; only ``<kid>.pub`` belongs in ``licensing/keys/``.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from licensing import crypto
from licensing.errors import FormatError, InvalidInput, LicenseError
from licensing.fingerprint import Fingerprint, check_strength
from licensing.model import DAY, ID_RE, LICENCE_FORMAT, REQUEST_FORMAT, Licence, Limits, load_json
from licensing.verify import check_signature, sign_document, split_signed, verify_receipt
from storage.files import atomic_write, ensure_dir

FEATURE_RE = re.compile(r"^(\*|[a-z][a-z0-9_.-]{0,31})$")


@dataclass(frozen=True)
class ActivationRequest:
    """A parsed ``appliance-license request`` document."""

    fingerprint: Fingerprint
    box_key: str
    nonce: str
    created_at: int
    evaluation_started_at: int = 0  # when this machine's evaluation began (0: never)


def keygen(out_dir: Path) -> tuple[Path, Path, str]:
    """Write ``<kid>.pem`` (private, 0600) and ``<kid>.pub`` into ``out_dir``; return both."""
    out = ensure_dir(Path(out_dir))
    key = crypto.SigningKey.generate()
    pem, pub = out / f"{key.key_id}.pem", out / f"{key.key_id}.pub"
    if pem.exists() or pub.exists():
        raise InvalidInput(f"{pem} already exists")
    atomic_write(pem, key.to_pem(), mode=0o600)
    atomic_write(pub, (crypto.b64(key.public) + "\n").encode(), mode=0o644)
    return pem, pub, key.key_id


def load_signing_key(path: Path) -> crypto.SigningKey:
    try:
        return crypto.SigningKey.from_pem(Path(path).read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        raise FormatError(f"{path} is not an Ed25519 private key: {exc}") from exc


def parse_request(data: bytes, limits: Limits = Limits()) -> ActivationRequest:
    """Parse and check an activation request; FormatError if anything is off."""
    doc = load_json(data, limits, what="activation request")
    if doc.get("format") != REQUEST_FORMAT:
        raise FormatError(f"not an activation request (format is not {REQUEST_FORMAT!r})")
    required = {"format", "fingerprint", "box_key", "nonce", "created_at"}
    if not required <= set(doc) <= required | {"evaluation_started_at"}:
        raise FormatError("activation request has missing or unknown fields")
    started = doc.get("evaluation_started_at", 0)
    if not isinstance(started, int) or isinstance(started, bool) or started < 0:
        raise FormatError("activation request evaluation_started_at must be an integer")
    box_key, nonce, created = doc["box_key"], doc["nonce"], doc["created_at"]
    if not isinstance(box_key, str) or len(crypto.unb64(box_key)) != 32:
        raise FormatError("activation request box_key is not an Ed25519 public key")
    if not isinstance(nonce, str) or not re.fullmatch(r"[0-9a-f]{32}", nonce):
        raise FormatError("activation request nonce is malformed")
    if not isinstance(created, int) or isinstance(created, bool):
        raise FormatError("activation request created_at must be an integer")
    fp = check_strength(Fingerprint.from_json(doc["fingerprint"]))
    return ActivationRequest(fp, box_key, nonce, created, started)


def _list(values: str | list[str], what: str, pattern: re.Pattern[str] | None = None) -> list[str]:
    items = values.split(",") if isinstance(values, str) else list(values)
    items = [v.strip() for v in items if v.strip()]
    if not items:
        raise InvalidInput(f"at least one {what} is required")
    for item in items:
        if len(item) > 128 or (pattern and not pattern.match(item)):
            raise InvalidInput(f"invalid {what} {item!r}")
    return items


def issue(
    request: ActivationRequest,
    key: crypto.SigningKey,
    *,
    customer: str,
    seats: int,
    days: int,
    models: str | list[str],
    features: str | list[str],
    now: int,
    grace_days: int = 14,
    licence_id: str | None = None,
    evaluation: bool = False,
    serial: int | None = None,
) -> bytes:
    """Sign a licence bound to ``request``'s fingerprint; returns the activation file bytes.

    Refuses (WeakFingerprint) a request whose fingerprint cannot bind a licence to one
    machine. ``serial`` orders licences issued in the same second (default: the vendor
    machine's clock in microseconds, so a later issue is newer); the box refuses any licence
    older than the newest it has installed.
    """
    check_strength(request.fingerprint)
    if not customer.strip() or len(customer) > 200:
        raise InvalidInput("customer must be 1..200 characters")
    if not 1 <= seats <= Limits().max_seats:
        raise InvalidInput("seats must be a positive number")
    if not 1 <= days <= 3650:
        raise InvalidInput("days must be 1..3650")
    licence_id = licence_id or f"lic-{secrets.token_hex(6)}"
    if not ID_RE.match(licence_id):
        raise InvalidInput("licence id may use letters, digits, '.', '_' and '-' only")
    body = {
        "format": LICENCE_FORMAT,
        "licence_id": licence_id,
        "customer": customer.strip(),
        "seats": seats,
        "models": _list(models, "model glob"),
        "features": _list(features, "feature", FEATURE_RE),
        # a day of slack so a box whose clock is a little behind can import at once
        "valid_from": now - DAY,
        "expires_at": now + days * DAY,
        "grace_days": grace_days,
        "issued_at": now,
        "kid": key.key_id,
        "fingerprint": request.fingerprint.to_json(),
        "evaluation": evaluation,
        "box_key": request.box_key,
        "request_nonce": request.nonce,
        "serial": time.time_ns() // 1000 if serial is None else serial,
    }
    Licence.from_json(body)  # the issuer never signs what the box would refuse to parse
    return sign_document(body, "licence", key)


def inspect(data: bytes, trusted: Mapping[str, bytes], limits: Limits = Limits()) -> dict[str, Any]:
    """Describe a licence, request or receipt; report whether its signature verifies."""
    doc = load_json(data, limits, what="file")
    if "licence" in doc:
        body, sig = split_signed(data, "licence", limits)
        licence = Licence.from_json(body, limits)
        out: dict[str, Any] = {"kind": "licence", **licence.to_json()}
        out["signature"] = _sig_status(body, sig, trusted)
        return out
    if "receipt" in doc:
        try:
            body = verify_receipt(data, limits)
            return {"kind": "deactivation receipt", **body, "signature": "valid (box key)"}
        except LicenseError as exc:
            body, _ = split_signed(data, "receipt", limits)
            return {"kind": "deactivation receipt", **body, "signature": f"INVALID: {exc}"}
    if doc.get("format") == REQUEST_FORMAT:
        req = parse_request(data, limits)
        return {
            "kind": "activation request",
            "fingerprint_components": sorted(req.fingerprint.components),
            "box_key": req.box_key,
            "nonce": req.nonce,
            "created_at": req.created_at,
            "evaluation_started_at": req.evaluation_started_at,
        }
    raise FormatError("not a licence, activation request or deactivation receipt")


def _sig_status(body: dict[str, Any], sig: dict[str, str], trusted: Mapping[str, bytes]) -> str:
    try:
        check_signature(body, sig, trusted)
    except LicenseError as exc:
        return f"NOT VERIFIED: {exc}"
    return f"valid (key {sig['kid']})"

"""Box-side licence files: activation requests, import, evaluation, deactivation.

The thin I/O driver around ``licensing.verify``. Files in the data directory (dir 0700,
files 0600, every write atomic):

- ``licence.json``      the installed licence, exactly as signed
- ``box.key``           this box's Ed25519 key, created at first use; signs deactivation
                        receipts, and its public half goes into requests and licences
- ``fingerprint.salt``  the random salt for fingerprint hashes
- ``eval.pub``          public key of the evaluation licence; its private half is thrown
                        away right after signing, so nobody can mint another one with it
- ``evaluation.json``   marker: an evaluation was already started on this box
- ``receipts/``         copies of deactivation receipts
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

from licensing import crypto
from licensing.errors import FormatError, LicenceDeactivated, StateError
from licensing.fingerprint import Fingerprint, collect_facts, match, new_salt
from licensing.model import (
    DAY,
    LICENCE_FORMAT,
    RECEIPT_FORMAT,
    REQUEST_FORMAT,
    Licence,
    Limits,
)
from licensing.storage import atomic_write, ensure_dir, read_limited
from licensing.verify import (
    LicenceStatus,
    VerifiedLicence,
    sign_document,
    status_of,
    verify_licence,
)

log = logging.getLogger(__name__)

LICENCE_FILE = "licence.json"
EVAL_SEATS = 3
EVAL_DAYS = 30


def vendor_keys() -> dict[str, bytes]:
    """Public keys compiled into the package: ``licensing/keys/<kid>.pub``."""
    texts = {}
    for entry in resources.files("licensing").joinpath("keys").iterdir():
        if entry.name.endswith(".pub"):
            texts[entry.name[: -len(".pub")]] = entry.read_text()
    return crypto.load_public_keys(texts)


def default_data_dir() -> Path:
    return Path(os.environ.get("APPLIANCE_DATA_DIR", "./data"))


def read_document(path: Path, limits: Limits = Limits()) -> bytes:
    """Read a user-supplied file, refusing directories, oversize files and unreadable paths."""
    path = Path(path)
    try:
        if not path.is_file():
            raise FormatError(f"{path} is not a regular file")
        data = read_limited(path, limits.max_bytes)
    except OSError as exc:
        raise FormatError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(data) > limits.max_bytes:
        raise FormatError(f"{path} is larger than {limits.max_bytes} bytes")
    if not data.strip():
        raise FormatError(f"{path} is empty")
    return data


@dataclass(frozen=True)
class Installed:
    """The installed licence (possibly expired) and its status, or why it is unusable."""

    verified: VerifiedLicence | None
    status: LicenceStatus
    error: str = ""


class Activation:
    """Licence files of one data directory. Clock and machine facts are injectable."""

    def __init__(
        self,
        data_dir: Path,
        trusted_keys: Mapping[str, bytes] | None = None,
        *,
        clock: Callable[[], float] = time.time,
        facts: Callable[[], Mapping[str, str]] = collect_facts,
        limits: Limits = Limits(),
    ) -> None:
        self.data_dir = Path(data_dir)
        self.trusted = dict(vendor_keys() if trusted_keys is None else trusted_keys)
        self._clock, self._facts, self.limits = clock, facts, limits

    @property
    def licence_path(self) -> Path:
        return self.data_dir / LICENCE_FILE

    def now(self) -> int:
        return int(self._clock())

    # local keys ----------------------------------------------------------------------
    def salt(self) -> str:
        path = self.data_dir / "fingerprint.salt"
        if not path.exists():
            atomic_write(path, new_salt().encode())
        return path.read_text().strip()

    def box_key(self) -> crypto.SigningKey:
        """This box's signing key, created (0600) at first use."""
        path = self.data_dir / "box.key"
        if not path.exists():
            atomic_write(path, crypto.SigningKey.generate().to_pem())
            log.info("licensing: created box key %s", path)
        try:
            return crypto.SigningKey.from_pem(path.read_bytes())
        except (ValueError, OSError) as exc:
            raise StateError(f"box key {path} is unreadable: {exc}") from exc

    def eval_keys(self) -> dict[str, bytes]:
        path = self.data_dir / "eval.pub"
        if not path.exists():
            return {}
        raw = crypto.unb64(path.read_text().strip())
        return {crypto.key_id(raw): raw}

    def fingerprint(self) -> Fingerprint:
        return Fingerprint.from_facts(self._facts(), self.salt())

    # requests ------------------------------------------------------------------------
    def make_request(self) -> dict[str, Any]:
        """Activation request: hashed fingerprint, box public key, nonce; no raw serials."""
        ensure_dir(self.data_dir)
        box = self.box_key()
        return {
            "format": REQUEST_FORMAT,
            "fingerprint": self.fingerprint().to_json(),
            "box_key": crypto.b64(box.public),
            "nonce": secrets.token_hex(16),
            "created_at": self.now(),
        }

    # installed licence ---------------------------------------------------------------
    def verify(self, data: bytes, *, allow_expired: bool = False) -> VerifiedLicence:
        """Verify licence bytes for this machine now; see ``verify.verify_licence``."""
        return verify_licence(
            data,
            trusted=self.trusted,
            facts=self._facts(),
            now=self.now(),
            eval_keys=self.eval_keys(),
            limits=self.limits,
            allow_expired=allow_expired,
        )

    def installed(self) -> Installed:
        """Load and re-verify the installed licence; never raises for a bad file."""
        now = self.now()
        if not self.licence_path.exists():
            return Installed(None, status_of(None, now))
        try:
            verified = self.verify(
                read_document(self.licence_path, self.limits), allow_expired=True
            )
        except Exception as exc:  # any failure means "no usable licence", reported as such
            log.error("licensing: installed licence rejected: %s", exc)
            return Installed(None, replace(status_of(None, now), message=str(exc)), str(exc))
        return Installed(
            verified, status_of(verified.licence, now, verified.fingerprint.describe())
        )

    def install(self, data: bytes) -> VerifiedLicence:
        """Verify ``data`` (expired or foreign -> error) and install it atomically."""
        verified = self.verify(data)
        lid = verified.licence.licence_id
        if (self.data_dir / "receipts" / f"{lid}.json").exists():
            raise LicenceDeactivated(
                f"licence {lid} was deactivated on this box; ask the vendor for a new activation"
            )
        ensure_dir(self.data_dir)
        atomic_write(self.licence_path, data)
        log.info(
            "licensing: installed licence %s for %r (%d seats, expires %d)",
            verified.licence.licence_id, verified.licence.customer,
            verified.licence.seats, verified.licence.expires_at,
        )  # fmt: skip
        return verified

    # evaluation ----------------------------------------------------------------------
    def evaluation_used(self) -> bool:
        return (self.data_dir / "evaluation.json").exists()

    def create_evaluation(self, seats: int = EVAL_SEATS, days: int = EVAL_DAYS) -> VerifiedLicence:
        """Sign and install an evaluation licence with a one-off local key."""
        if self.evaluation_used():
            raise StateError("an evaluation was already started on this box; import a licence")
        ensure_dir(self.data_dir)
        key = crypto.SigningKey.generate()
        now = self.now()
        body = {
            "format": LICENCE_FORMAT,
            "licence_id": f"eval-{secrets.token_hex(4)}",
            "customer": "EVALUATION",
            "seats": min(seats, self.limits.eval_max_seats),
            "models": ["*"],
            "features": ["*"],
            "valid_from": now,
            "expires_at": now + min(days, self.limits.eval_max_days) * DAY,
            "grace_days": 0,
            "issued_at": now,
            "kid": key.key_id,
            "fingerprint": self.fingerprint().to_json(),
            "evaluation": True,
            "box_key": crypto.b64(self.box_key().public),
            "request_nonce": "",
        }
        data = sign_document(body, "licence", key)
        atomic_write(self.data_dir / "eval.pub", crypto.b64(key.public).encode())
        del key  # the private half is never stored
        atomic_write(self.data_dir / "evaluation.json", crypto.canonical_json({"started_at": now}))
        verified = self.install(data)
        log.warning("licensing: EVALUATION licence %s created", verified.licence.licence_id)
        return verified

    # deactivation --------------------------------------------------------------------
    def deactivate(self) -> bytes:
        """Sign a deactivation receipt with the box key, save a copy, remove the licence."""
        inst = self.installed()
        if inst.verified is None:
            raise StateError("no valid licence is installed; nothing to deactivate")
        lic: Licence = inst.verified.licence
        box = self.box_key()
        body = {
            "format": RECEIPT_FORMAT,
            "licence_id": lic.licence_id,
            "customer": lic.customer,
            "fingerprint": lic.fingerprint,
            "box_key": crypto.b64(box.public),
            "deactivated_at": self.now(),
            "nonce": secrets.token_hex(16),
        }
        receipt = sign_document(body, "receipt", box)
        atomic_write(self.data_dir / "receipts" / f"{lic.licence_id}.json", receipt)
        self.licence_path.unlink()
        log.warning("licensing: licence %s deactivated on this box", lic.licence_id)
        return receipt

    def fingerprint_report(self, licence: Licence) -> str:
        return match(Fingerprint.from_json(licence.fingerprint), self._facts()).describe()

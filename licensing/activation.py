"""Box-side licence files: activation requests, import, evaluation, deactivation.

The thin I/O driver around ``licensing.verify``. Files in the data directory (dir 0700,
files 0600, every write atomic):

- ``licence.json``      the installed licence, exactly as signed
- ``box.key``           this box's Ed25519 key, created at first use; signs deactivation
                        receipts, and its public half goes into requests and licences
- ``fingerprint.salt``  the random salt for fingerprint hashes
- ``receipts/``         copies of deactivation receipts

Nothing about the evaluation lives in the data directory: its terms (3 seats, 30 days, every
model) are built into this code, and its start is in the trusted record (``licensing.trust``,
outside ``data/`` and mirrored in the database), so it runs once per machine. No key is read
from the data directory: only the vendor keys compiled into the package sign licences. The
trusted record also holds the newest licence installed and the licences deactivated here;
``install`` and ``installed`` refuse a licence older than the newest, or deactivated.
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
from licensing.errors import FormatError, StateError
from licensing.fingerprint import (
    Fingerprint,
    FingerprintMatch,
    check_strength,
    collect_facts,
    match,
    new_salt,
)
from licensing.model import DAY, RECEIPT_FORMAT, REQUEST_FORMAT, Entitlements, Licence, Limits
from licensing.trust import TrustRecord, TrustStore, default_state_dir
from licensing.verify import (
    LicenceStatus,
    VerifiedLicence,
    check_current,
    sign_document,
    status_of,
    verify_licence,
)
from storage.files import atomic_write, ensure_dir, read_limited

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
        trust: TrustStore | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.trusted = dict(vendor_keys() if trusted_keys is None else trusted_keys)
        self._clock, self._facts, self.limits = clock, facts, limits
        self.trust = trust or TrustStore(default_state_dir(), facts)

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

    def fingerprint(self) -> Fingerprint:
        return Fingerprint.from_facts(self._facts(), self.salt())

    # requests ------------------------------------------------------------------------
    def make_request(self) -> dict[str, Any]:
        """Activation request: hashed fingerprint, box public key, nonce, and when this
        machine's evaluation started (so the vendor sees it); no raw serials.

        WeakFingerprint when this machine exposes too few facts to bind a licence."""
        ensure_dir(self.data_dir)
        fp = check_strength(self.fingerprint())
        box = self.box_key()
        return {
            "format": REQUEST_FORMAT,
            "fingerprint": fp.to_json(),
            "box_key": crypto.b64(box.public),
            "nonce": secrets.token_hex(16),
            "created_at": self.now(),
            "evaluation_started_at": self.trust.load().evaluation_started_at,
        }

    # installed licence ---------------------------------------------------------------
    def verify(self, data: bytes, *, allow_expired: bool = False) -> VerifiedLicence:
        """Verify licence bytes for this machine now; see ``verify.verify_licence``."""
        return verify_licence(
            data,
            trusted=self.trusted,
            facts=self._facts(),
            now=self.now(),
            limits=self.limits,
            allow_expired=allow_expired,
        )

    def installed(self) -> Installed:
        """Load and re-verify the installed licence; never raises for a bad file."""
        now = self.now()
        record = self.trust.load()
        if not self.licence_path.exists():
            evaluation = self.evaluation(record)
            if evaluation is None:
                return Installed(None, status_of(None, now))
            return Installed(evaluation, status_of(evaluation.licence, now,
                                                   evaluation.fingerprint.describe()))
        try:
            verified = self.verify(
                read_document(self.licence_path, self.limits), allow_expired=True
            )
            check_current(verified.licence, record.newest, record.deactivated)
            if verified.licence.order > record.newest:  # a newer file put in place by hand
                self._seen(verified.licence)
        except Exception as exc:  # any failure means "no usable licence", reported as such
            log.error("licensing: installed licence rejected: %s", exc)
            return Installed(None, replace(status_of(None, now), message=str(exc)), str(exc))
        return Installed(
            verified, status_of(verified.licence, now, verified.fingerprint.describe())
        )

    def install(self, data: bytes) -> VerifiedLicence:
        """Verify ``data`` (expired, foreign, deactivated or older than the newest licence
        installed -> error), install it atomically and record it as the newest."""
        verified = self.verify(data)
        lic = verified.licence
        record = self.trust.load()
        check_current(lic, record.newest, record.deactivated)
        ensure_dir(self.data_dir)
        atomic_write(self.licence_path, data)
        self._seen(lic)
        log.info(
            "licensing: installed licence %s for %r (%d seats, expires %d)",
            verified.licence.licence_id, verified.licence.customer,
            verified.licence.seats, verified.licence.expires_at,
        )  # fmt: skip
        return verified

    def _seen(self, lic: Licence) -> None:
        """Record ``lic`` as the newest licence installed here (the record only grows)."""
        self.trust.update(lambda r: r if r.newest >= lic.order else replace(
            r, newest=lic.order, newest_id=lic.licence_id))

    # evaluation ----------------------------------------------------------------------
    def evaluation_used(self) -> bool:
        return self.trust.load().evaluation_started_at > 0

    def evaluation(self, record: TrustRecord) -> VerifiedLicence | None:
        """The built-in evaluation licence of this machine, if one was started and no vendor
        licence was ever installed here (a real licence ends the evaluation for good)."""
        started = record.evaluation_started_at
        if not started or record.newest != (0, 0):
            return None
        fp = self.fingerprint()
        lic = Licence(
            licence_id=record.evaluation_id or f"eval-{started}", customer="EVALUATION",
            seats=min(EVAL_SEATS, self.limits.eval_max_seats),
            entitlements=Entitlements(models=("*",), features=("*",)),
            valid_from=started, expires_at=started + EVAL_DAYS * DAY, grace_days=0,
            issued_at=started, kid="built-in", fingerprint=fp.to_json(), evaluation=True,
        )  # fmt: skip
        n = len(fp.components)
        return VerifiedLicence(lic, FingerprintMatch(ok=True, total=n, matched=n, changed=()))

    def create_evaluation(self) -> VerifiedLicence:
        """Start this machine's one evaluation (recorded outside the data directory)."""
        now = self.now()
        eval_id = f"eval-{secrets.token_hex(4)}"

        def start(r: TrustRecord) -> TrustRecord:
            if r.evaluation_started_at or r.newest != (0, 0):
                raise StateError(
                    "an evaluation was already started on this machine; import a licence")
            return replace(r, evaluation_started_at=now, evaluation_id=eval_id)

        verified = self.evaluation(self.trust.update(start))
        assert verified is not None
        log.warning("licensing: EVALUATION licence %s started", verified.licence.licence_id)
        return verified

    # deactivation --------------------------------------------------------------------
    def deactivate(self) -> bytes:
        """Sign a deactivation receipt with the box key, save a copy, remove the licence."""
        inst = self.installed()
        if inst.verified is None or not self.licence_path.exists():
            raise StateError("no vendor licence is installed; nothing to deactivate")
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
        self.trust.update(lambda r: replace(
            r, deactivated=tuple(sorted({*r.deactivated, lic.licence_id}))))
        self.licence_path.unlink()
        log.warning("licensing: licence %s deactivated on this box", lic.licence_id)
        return receipt

    def fingerprint_report(self, licence: Licence) -> str:
        return match(Fingerprint.from_json(licence.fingerprint), self._facts()).describe()

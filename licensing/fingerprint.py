"""Machine fingerprint: several hardware/OS facts, each salted-hashed separately.

``collect_facts`` (I/O) reads machine-id, CPU model, MAC addresses of physical NICs, the
root filesystem id and the hostname. ``Fingerprint.from_facts`` (pure) turns them into
``HMAC-SHA256(salt, name + NUL + value)`` per component, so no raw serial leaves the box;
the salt is random per box and travels with the fingerprint so the vendor can bind a
licence to it and the box can recompute it after re-import.

Honest limit: the salt is not secret from the vendor, so a facts with low entropy (a MAC
address, a hostname) could be recovered by brute force by whoever holds a request; the
salt only defeats precomputed tables and linking one box across customers.

``match`` tolerates exactly one changed component when the licence names three or more
(a replaced NIC or a renamed host must not lock a customer out); two changes -> mismatch.
For that rule to mean anything a fingerprint needs ``MIN_COMPONENTS`` components, at least
``MIN_UNIQUE`` of them machine-unique (machine id, MACs, root filesystem id): the box will
not request, the vendor will not issue and the box will not install anything weaker
(``check_strength``). A hostname alone binds a licence to nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from licensing.errors import FingerprintMismatch, FormatError, WeakFingerprint

log = logging.getLogger(__name__)

COMPONENTS = ("machine_id", "cpu", "macs", "rootfs", "hostname")
UNIQUE = ("machine_id", "macs", "rootfs")
MIN_COMPONENTS = 3
MIN_UNIQUE = 2
HEX64 = re.compile(r"^[0-9a-f]{64}$")
SALT_RE = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class Fingerprint:
    """Salt plus one hash per known component (missing facts are simply absent)."""

    salt: str
    components: Mapping[str, str]

    @classmethod
    def from_facts(cls, facts: Mapping[str, str], salt: str) -> Fingerprint:
        """Hash each non-empty fact with ``salt``; pure."""
        if not SALT_RE.match(salt):
            raise FormatError("fingerprint salt must be 32 hex characters")
        key = bytes.fromhex(salt)
        comps = {
            name: hmac.new(key, f"{name}\0{value}".encode(), hashlib.sha256).hexdigest()
            for name, value in sorted(facts.items())
            if value
        }
        return cls(salt=salt, components=comps)

    def to_json(self) -> dict[str, Any]:
        return {"salt": self.salt, "components": dict(sorted(self.components.items()))}

    @classmethod
    def from_json(cls, d: Any) -> Fingerprint:
        if not isinstance(d, dict) or set(d) != {"salt", "components"}:
            raise FormatError("fingerprint must be an object with salt and components")
        salt, comps = d["salt"], d["components"]
        if not isinstance(salt, str) or not SALT_RE.match(salt):
            raise FormatError("fingerprint salt must be 32 hex characters")
        if not isinstance(comps, dict) or not comps or len(comps) > 16:
            raise FormatError("fingerprint components must be a non-empty object")
        for name, value in comps.items():
            if name not in COMPONENTS or not isinstance(value, str) or not HEX64.match(value):
                raise FormatError(f"fingerprint component {name!r} is not valid")
        return cls(salt=salt, components=dict(comps))


def check_strength(fp: Fingerprint) -> Fingerprint:
    """``fp`` if it can bind a licence to one machine; WeakFingerprint otherwise; pure."""
    names = set(fp.components)
    unique = names & set(UNIQUE)
    if len(names) < MIN_COMPONENTS or len(unique) < MIN_UNIQUE:
        raise WeakFingerprint(
            f"fingerprint has {len(names)} component(s) ({', '.join(sorted(names))}); at "
            f"least {MIN_COMPONENTS} are needed, {MIN_UNIQUE} of them from "
            f"{', '.join(UNIQUE)}"
        )
    return fp


@dataclass(frozen=True)
class FingerprintMatch:
    """Outcome of comparing a licence's fingerprint with this machine's."""

    ok: bool
    total: int
    matched: int
    changed: tuple[str, ...]

    def describe(self) -> str:
        if not self.changed:
            return f"all {self.total} components match"
        verdict = "tolerated" if self.ok else "rejected"
        return f"{self.matched}/{self.total} match; changed: {', '.join(self.changed)} ({verdict})"


def match(bound: Fingerprint, current_facts: Mapping[str, str]) -> FingerprintMatch:
    """Compare the licence's ``bound`` fingerprint with facts read now; pure."""
    now = Fingerprint.from_facts(current_facts, bound.salt).components
    total = len(bound.components)
    changed = tuple(
        sorted(
            name
            for name, value in bound.components.items()
            if not hmac.compare_digest(value, now.get(name, ""))
        )
    )
    allowed = 1 if total >= 3 else 0
    return FingerprintMatch(
        ok=len(changed) <= allowed, total=total, matched=total - len(changed), changed=changed
    )


def require_match(bound: Fingerprint, current_facts: Mapping[str, str]) -> FingerprintMatch:
    """Like ``match`` but raise FingerprintMismatch when not tolerated."""
    result = match(bound, current_facts)
    if not result.ok:
        raise FingerprintMismatch(f"licence is bound to another machine ({result.describe()})")
    return result


def new_salt() -> str:
    return secrets.token_hex(16)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return ""


def _cpu_model(root: Path) -> str:
    for line in _read(root / "proc/cpuinfo").splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "cpu model", "Hardware"):
            return value.strip()
    return ""


def _macs(root: Path) -> str:
    """Sorted MACs of physical NICs (those with a ``device`` link; no loopback/virtual)."""
    net = root / "sys/class/net"
    macs = set()
    try:
        names = sorted(os.listdir(net))
    except OSError:
        return ""
    for name in names:
        if not (net / name / "device").exists():
            continue
        mac = _read(net / name / "address").lower()
        if mac and mac != "00:00:00:00:00:00":
            macs.add(mac)
    return ",".join(sorted(macs))


def _rootfs(root: Path) -> str:
    """UUID of the filesystem mounted at / if udev lists it, else the statvfs fsid."""
    by_uuid = root / "dev/disk/by-uuid"
    try:
        root_dev = os.stat(root).st_dev
        for entry in sorted(os.listdir(by_uuid)):
            if os.stat(by_uuid / entry).st_rdev == root_dev:
                return entry
    except OSError:
        pass
    try:
        return f"fsid:{os.statvfs(root).f_fsid:x}"
    except (OSError, AttributeError):
        return ""


def collect_facts(root: Path = Path("/")) -> dict[str, str]:
    """Read this machine's raw facts (never written anywhere; only their hashes are)."""
    facts = {
        "machine_id": _read(root / "etc/machine-id") or _read(root / "var/lib/dbus/machine-id"),
        "cpu": _cpu_model(root),
        "macs": _macs(root),
        "rootfs": _rootfs(root),
        "hostname": socket.gethostname() if root == Path("/") else _read(root / "etc/hostname"),
    }
    missing = [k for k, v in facts.items() if not v]
    if missing:
        log.info("fingerprint: facts unavailable on this machine: %s", ", ".join(missing))
    return facts

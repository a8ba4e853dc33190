"""Pure verification of a bundle: header bytes, signature, policy, payload hashes.

Nothing here touches disk, clocks or processes; the reader feeds bytes and ``now`` and
gets a frozen ``Manifest`` back or a ``BundleError``. The order is the order of trust:
parse the header strictly, verify the Ed25519 signature over the raw manifest bytes, only
then parse the manifest and apply policy (expiry, arch, anti-rollback), and finally check
each payload's bytes as they stream past (``PayloadCheck``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from firmware.bundle import (
    LENGTH,
    MAGIC,
    Header,
    Limits,
    Manifest,
    Payload,
    parse_manifest,
    parse_version,
)
from firmware.errors import (
    BundleExpiredError,
    BundleFormatError,
    BundleSignatureError,
    DowngradeError,
    IncompatibleError,
    LimitError,
    PayloadError,
)
from licensing.crypto import b64, canonical_json, unb64, verify_signature
from licensing.errors import LicenseError

CLOCK_SKEW = timedelta(days=1)


@dataclass(frozen=True)
class BoxState:
    """What the box knows that policy depends on: its arch and versions per bundle type."""

    arch: str
    installed: Mapping[str, str] = field(default_factory=dict)
    floors: Mapping[str, str] = field(default_factory=dict)


def header_span(limits: Limits) -> int:
    """The most bytes a header can occupy; the reader reads at most this much first."""
    return len(MAGIC) + 2 * LENGTH.size + limits.max_manifest + limits.max_signature


def parse_header(data: bytes, limits: Limits) -> Header:
    """Parse magic, lengths, manifest bytes and the signature block from the file's start."""
    if data[: len(MAGIC)] != MAGIC:
        raise BundleFormatError("not an update bundle (bad magic or unsupported format)")
    pos = len(MAGIC)
    manifest_bytes, pos = _chunk(data, pos, limits.max_manifest, "manifest")
    block, pos = _chunk(data, pos, limits.max_signature, "signature block")
    try:
        sig = json.loads(block.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BundleFormatError("signature block is not valid JSON") from exc
    if (not isinstance(sig, dict) or set(sig) != {"alg", "kid", "sig"}
            or not all(isinstance(v, str) for v in sig.values())):
        raise BundleFormatError("signature block must hold exactly alg, kid and sig strings")
    if canonical_json(sig) != block:
        raise BundleFormatError("signature block is not in canonical form")
    try:
        canonical_sig = b64(unb64(sig["sig"]))
    except LicenseError as exc:
        raise BundleSignatureError(str(exc)) from exc
    if canonical_sig != sig["sig"]:
        raise BundleSignatureError("signature is not canonical base64")
    return Header(manifest_bytes, sig["alg"], sig["kid"], sig["sig"], pos)


def _chunk(data: bytes, pos: int, cap: int, what: str) -> tuple[bytes, int]:
    if len(data) < pos + LENGTH.size:
        raise BundleFormatError(f"bundle is truncated before the {what} length")
    (n,) = LENGTH.unpack_from(data, pos)
    pos += LENGTH.size
    if n == 0 or n > cap:
        raise LimitError(f"{what} length {n} is outside 1..{cap} bytes")
    if len(data) < pos + n:
        raise BundleFormatError(f"bundle is truncated inside the {what}")
    return data[pos: pos + n], pos + n


def verify_manifest(header: Header, trusted: Mapping[str, bytes], now: datetime,
                    box: BoxState, limits: Limits) -> Manifest:
    """Check the signature, then parse and apply expiry, arch and anti-rollback policy."""
    try:
        verify_signature(header.manifest_bytes, header.sig, header.kid, header.alg, trusted)
    except LicenseError as exc:
        raise BundleSignatureError(str(exc)) from exc
    manifest = parse_manifest(header.manifest_bytes, limits)
    if canonical_json(json.loads(header.manifest_bytes)) != header.manifest_bytes:
        raise BundleFormatError("manifest is not in canonical form")
    if now >= manifest.expires:
        raise BundleExpiredError(f"bundle expired at {manifest.expires:%Y-%m-%d %H:%M}Z")
    if manifest.created > now + CLOCK_SKEW:
        raise BundleExpiredError(f"bundle claims creation at {manifest.created:%Y-%m-%d}, "
                                 "in the future; is this box's clock right?")
    if box.arch not in manifest.arch and "any" not in manifest.arch:
        raise IncompatibleError(f"bundle is for {', '.join(manifest.arch)}; this box is "
                                f"{box.arch}")
    check_layout(manifest)
    check_versions(manifest, box)
    return manifest


def check_layout(manifest: Manifest) -> None:
    """Payload paths must fit the bundle type (see ``firmware.build``)."""
    paths = [p.path for p in manifest.payloads]
    if manifest.type == "release":
        ok = bool(paths) and all(len(p.split("/")) == 2 and p.startswith("wheels/")
                                 and p.endswith(".whl") for p in paths)
        want = "only wheels/<name>.whl"
    elif manifest.type == "models":
        ok = bool(paths) and all(len(p.split("/")) == 3 and p.startswith("models/")
                                 for p in paths)
        want = "only models/<pack>/<file>"
    else:
        ok, want = paths == ["config/appliance.toml"], "exactly config/appliance.toml"
    if not ok:
        raise IncompatibleError(f"a {manifest.type} bundle must carry {want}; this one "
                                f"carries {', '.join(paths) or 'nothing'}")


def check_versions(manifest: Manifest, box: BoxState) -> None:
    """Anti-rollback: newer than installed and >= the recorded floor, unless signed downgrade."""
    installed = box.installed.get(manifest.type)
    floor = box.floors.get(manifest.type)
    new = parse_version(manifest.version)
    have = parse_version(installed) if installed else (0, 0, 0, 0)
    if have < parse_version(manifest.min_version):
        raise IncompatibleError(
            f"{manifest.type} {manifest.version} needs at least {manifest.min_version} "
            f"installed; this box has {installed or 'none'}")
    if manifest.allow_downgrade:
        return
    if installed and new <= have:
        raise DowngradeError(f"{manifest.type} {manifest.version} is not newer than the "
                             f"installed {installed}")
    if floor and new < parse_version(floor):
        raise DowngradeError(f"{manifest.type} {manifest.version} is below this box's "
                             f"minimum {floor} (anti-rollback)")


def check_file_size(file_size: int, header: Header, manifest: Manifest) -> tuple[Payload, ...]:
    """The file must be exactly header + payloads; return payloads with their offsets."""
    expected = header.payload_offset + manifest.payload_size
    if file_size < expected:
        raise BundleFormatError(f"bundle is truncated: {file_size} bytes, manifest says "
                                f"{expected}")
    if file_size > expected:
        raise PayloadError(f"bundle has {file_size - expected} bytes more than its manifest "
                           "declares (a payload larger than signed, or trailing data)")
    out, offset = [], header.payload_offset
    for p in manifest.payloads:
        out.append(Payload(p.path, p.size, p.sha256, offset))
        offset += p.size
    return tuple(out)


class PayloadCheck:
    """Streams one payload's bytes through sha256 and refuses anything past its size."""

    def __init__(self, payload: Payload) -> None:
        self.payload = payload
        self.done = 0
        self._h = hashlib.sha256()

    def update(self, chunk: bytes) -> None:
        self.done += len(chunk)
        if self.done > self.payload.size:
            raise PayloadError(f"{self.payload.path} is larger than the {self.payload.size} "
                               "bytes its manifest says")
        self._h.update(chunk)

    def finish(self) -> None:
        if self.done != self.payload.size:
            raise PayloadError(f"{self.payload.path} is {self.done} bytes, manifest says "
                               f"{self.payload.size}")
        if self._h.hexdigest() != self.payload.sha256:
            raise PayloadError(f"{self.payload.path} sha256 {self._h.hexdigest()} does not "
                               f"match the signed {self.payload.sha256}")

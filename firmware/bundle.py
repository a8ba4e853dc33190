"""The update bundle format and its signed manifest (pure: bytes in, frozen objects out).

Layout of one ``.apub`` file::

    offset 0   8 bytes   magic  b"APUPD\\x00\\x00\\x01" (last byte: format version)
           8   4 bytes   manifest length M (unsigned, big-endian)
          12   M bytes   manifest: canonical JSON (crypto.canonical_json), UTF-8
        12+M   4 bytes   signature block length S
        16+M   S bytes   signature block: canonical JSON {"alg", "kid", "sig"}
      16+M+S   ...       payload blobs, concatenated in manifest order, no padding

Why not tar or zip: the signed manifest must be checked before a single payload byte is
read, and payloads must stream from known offsets. A fixed header gives both with about
twenty lines of parsing, and it has no member types: there is nothing in the container
that could be a link, a device or an absolute path except what the *signed* manifest
says, and the verifier refuses those entries. The file length must equal header plus the
declared payload sizes exactly, so truncation and trailing data are refused, and every
byte is covered: header bytes by strict parsing (the signature block must re-serialise
to the same bytes, base64 must be canonical), manifest bytes by the Ed25519 signature,
payload bytes by their signed sha256.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from firmware.errors import BundleFormatError, LimitError, UnsafePathError

MAGIC = b"APUPD\x00\x00\x01"
FORMAT = 1
LENGTH = struct.Struct(">I")
TYPES = ("release", "models", "config")
VERSION_RE = re.compile(r"^(0|[1-9]\d{0,8})(\.(0|[1-9]\d{0,8})){0,3}$")
SHA_RE = re.compile(r"^[0-9a-f]{64}$")
PART_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
ARCH_ANY = "any"


@dataclass(frozen=True)
class Limits:
    """Size caps this box enforces before and while reading a bundle."""

    max_manifest: int = 256 * 1024
    max_signature: int = 4 * 1024
    max_payloads: int = 10_000
    max_payload_size: int = 64 * 1024**3
    max_total_size: int = 128 * 1024**3
    max_path_depth: int = 8
    min_free_space: int = 64 * 1024**2  # kept free on top of twice the payload size


@dataclass(frozen=True)
class Payload:
    """One file carried by the bundle; ``path`` is relative and POSIX-style."""

    path: str
    size: int
    sha256: str
    offset: int = 0  # absolute offset in the bundle file, filled in by the reader


@dataclass(frozen=True)
class Manifest:
    """What the vendor signed about a bundle."""

    type: str
    version: str
    min_version: str
    arch: tuple[str, ...]
    created: datetime
    expires: datetime
    payloads: tuple[Payload, ...]
    allow_downgrade: bool = False
    description: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def payload_size(self) -> int:
        return sum(p.size for p in self.payloads)

    def to_json(self) -> dict[str, Any]:
        """The dict that is canonicalised and signed."""
        data: dict[str, Any] = dict(self.extra)
        data.update({
            "format": FORMAT,
            "type": self.type,
            "version": self.version,
            "min_version": self.min_version,
            "arch": list(self.arch),
            "created": format_time(self.created),
            "expires": format_time(self.expires),
            "allow_downgrade": self.allow_downgrade,
            "description": self.description,
            "payloads": [{"path": p.path, "size": p.size, "sha256": p.sha256, "type": "file"}
                         for p in self.payloads],
        })
        return data


@dataclass(frozen=True)
class Header:
    """The parsed fixed header: raw signed bytes, signature block and where payloads start."""

    manifest_bytes: bytes
    alg: str
    kid: str
    sig: str
    payload_offset: int


def parse_version(text: str) -> tuple[int, ...]:
    """``"1.2.3"`` -> ``(1, 2, 3, 0)``; 1-4 numeric parts, no leading zeros."""
    if not isinstance(text, str) or not VERSION_RE.match(text):
        raise BundleFormatError(f"version {text!r} is not of the form N[.N[.N[.N]]]")
    parts = tuple(int(p) for p in text.split("."))
    return parts + (0,) * (4 - len(parts))


def format_time(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: Any, what: str) -> datetime:
    if not isinstance(text, str):
        raise BundleFormatError(f"{what} must be a time string like 2027-01-31T00:00:00Z")
    try:
        t = datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError as exc:
        raise BundleFormatError(f"{what} {text!r} is not like 2027-01-31T00:00:00Z") from exc
    return t.replace(tzinfo=UTC)


def check_member_path(path: Any, limits: Limits) -> str:
    """Refuse absolute paths, ``..``, empty or odd parts; return the path unchanged."""
    if not isinstance(path, str) or not path:
        raise UnsafePathError(f"payload path {path!r} is empty or not a string")
    if path.startswith("/") or "\\" in path or "\x00" in path:
        raise UnsafePathError(f"payload path {path!r} is absolute or has odd characters")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise UnsafePathError(f"payload path {path!r} contains '..', '.' or an empty part")
    if len(parts) > limits.max_path_depth or not all(PART_RE.match(p) for p in parts):
        raise UnsafePathError(f"payload path {path!r} is too deep or has a disallowed name")
    return path


def encode_header(manifest_bytes: bytes, signature_block: bytes) -> bytes:
    """Magic, lengths, manifest and signature block (vendor side)."""
    return (MAGIC + LENGTH.pack(len(manifest_bytes)) + manifest_bytes
            + LENGTH.pack(len(signature_block)) + signature_block)


def parse_manifest(raw: bytes, limits: Limits) -> Manifest:
    """Validate the manifest JSON fields; call only on bytes whose signature verified."""
    import json

    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BundleFormatError(f"manifest is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise BundleFormatError("manifest must be a JSON object")
    if data.get("format") != FORMAT:
        raise BundleFormatError(f"manifest format {data.get('format')!r} is not {FORMAT}")
    if data.get("type") not in TYPES:
        raise BundleFormatError(f"bundle type {data.get('type')!r} is not one of {TYPES}")
    version, min_version = data.get("version"), data.get("min_version", "0")
    parse_version(version)
    parse_version(min_version)
    arch = data.get("arch")
    if (not isinstance(arch, list) or not arch
            or not all(isinstance(a, str) and a for a in arch)):
        raise BundleFormatError("manifest 'arch' must be a non-empty list of strings")
    if not isinstance(data.get("allow_downgrade", False), bool):
        raise BundleFormatError("manifest 'allow_downgrade' must be true or false")
    items = data.get("payloads")
    if not isinstance(items, list):
        raise BundleFormatError("manifest 'payloads' must be a list")
    if len(items) > limits.max_payloads:
        raise LimitError(f"bundle has {len(items)} payloads; this box allows "
                         f"{limits.max_payloads}")
    payloads, seen, total = [], set(), 0
    for item in items:
        if not isinstance(item, dict):
            raise BundleFormatError("each payload entry must be an object")
        path = check_member_path(item.get("path"), limits)
        if item.get("type", "file") != "file":
            raise UnsafePathError(f"payload {path!r} is a {item.get('type')!r}; only regular "
                                  "files are accepted (no links or devices)")
        size, sha = item.get("size"), item.get("sha256")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise BundleFormatError(f"payload {path!r} size must be a non-negative integer")
        if size > limits.max_payload_size:
            raise LimitError(f"payload {path!r} is {size} bytes; limit "
                             f"{limits.max_payload_size}")
        if not isinstance(sha, str) or not SHA_RE.match(sha):
            raise BundleFormatError(f"payload {path!r} sha256 must be 64 lower-case hex")
        folded = path.lower()
        if folded in seen or any(s.startswith(folded + "/") or folded.startswith(s + "/")
                                 for s in seen):
            raise UnsafePathError(f"payload path {path!r} duplicates or nests another")
        seen.add(folded)
        total += size
        payloads.append(Payload(path, size, sha))
    if total > limits.max_total_size:
        raise LimitError(f"bundle payloads total {total} bytes; limit {limits.max_total_size}")
    known = {"format", "type", "version", "min_version", "arch", "created", "expires",
             "allow_downgrade", "description", "payloads"}
    return Manifest(
        type=data["type"], version=version, min_version=min_version, arch=tuple(arch),
        created=parse_time(data.get("created"), "created"),
        expires=parse_time(data.get("expires"), "expires"),
        payloads=tuple(payloads), allow_downgrade=data.get("allow_downgrade", False),
        description=str(data.get("description", "")),
        extra={k: v for k, v in data.items() if k not in known},
    )

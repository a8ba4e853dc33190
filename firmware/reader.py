"""Reading a bundle file: the thin I/O around the pure verifier.

``open_verified`` reads the header (at most ``header_span`` bytes), verifies the signed
manifest, checks the file length, then streams every payload through its sha256 before
returning. ``VerifiedBundle.extract`` re-hashes while writing, so a file swapped after
verification is still refused. Trusted keys default to ``licensing/keys/*.pub``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from firmware.bundle import Header, Limits, Manifest, Payload
from firmware.errors import BundleFormatError, PayloadError, UnsafePathError
from firmware.verify import (
    BoxState,
    PayloadCheck,
    check_file_size,
    header_span,
    parse_header,
    verify_manifest,
)

log = logging.getLogger(__name__)

CHUNK = 1 << 20
Progress = Callable[[str, int, int], None]  # (label, done_bytes, total_bytes)


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle whose signature, policy and payload hashes all checked out."""

    path: Path
    header: Header
    manifest: Manifest
    payloads: tuple[Payload, ...]
    file_size: int

    def extract(self, dest: Path, progress: Progress | None = None,
                only: Callable[[Payload], bool] | None = None) -> list[Path]:
        """Write payloads under ``dest`` (which must exist), re-checking each hash."""
        written = []
        total = sum(p.size for p in self.payloads if only is None or only(p))
        done = 0
        with self.path.open("rb") as fh:
            for p in self.payloads:
                if only is not None and not only(p):
                    continue
                target = _safe_target(dest, p.path)
                target.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
                with os.fdopen(fd, "wb") as out:
                    check = PayloadCheck(p)
                    for chunk in _stream(fh, p):
                        check.update(chunk)
                        out.write(chunk)
                        done += len(chunk)
                        if progress:
                            progress("extract", done, total)
                    check.finish()
                    out.flush()
                    os.fsync(out.fileno())
                written.append(target)
        return written


def _safe_target(dest: Path, rel: str) -> Path:
    target = (dest / rel).resolve()
    if not target.is_relative_to(dest.resolve()):
        raise UnsafePathError(f"payload {rel!r} would be written outside {dest}")
    return dest / rel


def _stream(fh, p: Payload) -> Iterable[bytes]:
    fh.seek(p.offset)
    left = p.size
    while left:
        chunk = fh.read(min(CHUNK, left))
        if not chunk:
            raise BundleFormatError(f"bundle ended inside payload {p.path}")
        left -= len(chunk)
        yield chunk


def read_header(path: Path, limits: Limits) -> tuple[Header, int]:
    """Parse the header of ``path``; return it and the file size."""
    try:
        with Path(path).open("rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            data = fh.read(header_span(limits))
    except OSError as exc:
        raise BundleFormatError(f"cannot read bundle {path}: {exc.strerror}") from exc
    return parse_header(data, limits), size


def open_verified(path: Path, trusted: Mapping[str, bytes], now: datetime, box: BoxState,
                  limits: Limits | None = None,
                  progress: Progress | None = None) -> VerifiedBundle:
    """Verify everything about the bundle at ``path``; nothing is written."""
    limits = limits or Limits()
    path = Path(path)
    header, size = read_header(path, limits)
    manifest = verify_manifest(header, trusted, now, box, limits)
    payloads = check_payloads(path, header, manifest, size, progress)
    log.info("verified %s bundle %s (%d payloads, %d bytes, key %s)", manifest.type,
             manifest.version, len(payloads), manifest.payload_size, header.kid)
    return VerifiedBundle(path, header, manifest, payloads, size)


def check_payloads(path: Path, header: Header, manifest: Manifest, size: int,
                   progress: Progress | None = None) -> tuple[Payload, ...]:
    """Check the file length, then stream every payload through its size and sha256."""
    payloads = check_file_size(size, header, manifest)
    total, done = manifest.payload_size, 0
    if progress:
        progress("verify", 0, total)
    with Path(path).open("rb") as fh:
        if os.fstat(fh.fileno()).st_size != size:
            raise PayloadError("bundle changed while it was being verified")
        for p in payloads:
            check = PayloadCheck(p)
            for chunk in _stream(fh, p):
                check.update(chunk)
                done += len(chunk)
                if progress:
                    progress("verify", done, total)
            check.finish()
    return payloads


def load_trusted_keys(directory: Path | None = None) -> dict[str, bytes]:
    """Key id -> raw public key from ``*.pub`` files (base64 raw key or PEM)."""
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    from licensing.crypto import key_id, public_key_bytes, unb64
    from licensing.errors import LicenseError

    if directory is None:
        directory = Path(__file__).resolve().parent.parent / "licensing" / "keys"
    keys: dict[str, bytes] = {}
    if not Path(directory).is_dir():
        return keys
    for f in sorted(Path(directory).glob("*.pub")):
        text = f.read_text().strip()
        try:
            if text.startswith("-----BEGIN"):
                raw = public_key_bytes(load_pem_public_key(text.encode()))  # type: ignore[arg-type]
            else:
                raw = unb64(text)
        except (LicenseError, ValueError, TypeError) as exc:
            log.warning("ignoring unreadable public key %s: %s", f, exc)
            continue
        if len(raw) != 32:
            log.warning("ignoring %s: not a 32-byte Ed25519 key", f)
            continue
        keys[key_id(raw)] = raw
    return keys

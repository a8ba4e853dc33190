"""Vendor side: collect payloads, sign the manifest, write a bundle file atomically.

Payload layout inside a bundle, by type:

- ``release``: ``wheels/<file>.whl`` - the project's wheel and every locked dependency
  wheel, so the box installs with ``pip --no-index`` and no network.
- ``models``: ``models/<pack>/<file>`` - model pack directories, each with manifest.json.
- ``config``: ``config/appliance.toml``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from firmware.bundle import (
    ARCH_ANY,
    FORMAT,
    TYPES,
    Limits,
    Manifest,
    encode_header,
    parse_manifest,
    parse_time,
)
from firmware.errors import BundleFormatError
from licensing.crypto import ALGORITHM, SigningKey, canonical_json

log = logging.getLogger(__name__)

CHUNK = 1 << 20
MODEL_MANIFEST = "manifest.json"


def collect_payloads(bundle_type: str, paths: Sequence[Path]) -> list[tuple[str, Path]]:
    """Map the vendor's input paths to (bundle path, source file) pairs for ``bundle_type``."""
    if bundle_type not in TYPES:
        raise BundleFormatError(f"type must be one of {', '.join(TYPES)}")
    out: list[tuple[str, Path]] = []
    for raw in paths:
        path = Path(raw)
        if bundle_type == "release":
            wheels = sorted(path.glob("*.whl")) if path.is_dir() else [path]
            for w in wheels:
                if w.suffix != ".whl" or not w.is_file():
                    raise BundleFormatError(f"{w} is not a wheel file")
                out.append((f"wheels/{w.name}", w))
        elif bundle_type == "models":
            if not (path / MODEL_MANIFEST).is_file():
                raise BundleFormatError(f"{path} is not a model pack (no {MODEL_MANIFEST})")
            for f in sorted(p for p in path.iterdir() if p.is_file()):
                out.append((f"models/{path.name}/{f.name}", f))
        else:
            if not path.is_file():
                raise BundleFormatError(f"{path} is not a file")
            out.append(("config/appliance.toml", path))
    if bundle_type == "release" and not out:
        raise BundleFormatError("a release needs at least one wheel")
    if bundle_type == "config" and len(out) != 1:
        raise BundleFormatError("a config bundle carries exactly one appliance.toml")
    return out


def sha256_file(path: Path) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def build_bundle(out: Path, *, bundle_type: str, version: str, key: SigningKey,
                 files: Sequence[tuple[str, Path]], expires: datetime | str,
                 min_version: str = "0", arch: Sequence[str] = (ARCH_ANY,),
                 created: datetime | None = None, allow_downgrade: bool = False,
                 description: str = "", extra: dict[str, Any] | None = None) -> Manifest:
    """Build and sign a bundle; the manifest is validated with the box's own parser."""
    if isinstance(expires, str):
        expires = parse_time(expires, "expires")
    created = created or datetime.now(UTC).replace(microsecond=0)
    entries = []
    for rel, src in files:
        digest, size = sha256_file(Path(src))
        entries.append({"path": rel, "size": size, "sha256": digest, "type": "file"})
    manifest = Manifest(type=bundle_type, version=version, min_version=min_version,
                        arch=tuple(arch), created=created, expires=expires, payloads=(),
                        allow_downgrade=allow_downgrade, description=description,
                        extra=extra or {})
    data = manifest.to_json()
    data["payloads"] = entries
    parsed = parse_manifest(canonical_json(data), Limits())
    write_bundle(out, data, key, [Path(src) for _, src in files])
    log.info("wrote %s bundle %s to %s", bundle_type, version, out)
    return parsed


def write_bundle(out: Path, manifest: dict[str, Any], key: SigningKey,
                 blobs: Sequence[Path | bytes]) -> None:
    """Sign ``manifest`` as given (no validation) and write header + blobs atomically.

    Tests use this directly to craft hostile but validly signed bundles.
    """
    manifest = {"format": FORMAT, **manifest}
    body = canonical_json(manifest)
    block = canonical_json({"alg": ALGORITHM, "kid": key.key_id, "sig": key.sign(body)})
    out = Path(out)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=".tmp-", suffix=".apub")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(encode_header(body, block))
            for blob in blobs:
                if isinstance(blob, bytes):
                    fh.write(blob)
                    continue
                with Path(blob).open("rb") as src:
                    while chunk := src.read(CHUNK):
                        fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

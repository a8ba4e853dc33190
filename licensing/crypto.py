"""Ed25519 signing shared by licences and update bundles.

Pure functions over bytes: canonical JSON, key ids, sign and verify. The box trusts
only public keys it was built with (``trusted_keys``); vendor private keys never ship.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from licensing.errors import SignatureError

ALGORITHM = "ed25519"


def canonical_json(obj: Any) -> bytes:
    """Serialise ``obj`` deterministically: sorted keys, no spaces, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def b64(data: bytes) -> str:
    """URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    """Decode URL-safe base64 with or without padding; raise SignatureError on junk."""
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise SignatureError("signature or key is not valid base64") from exc


def public_key_bytes(key: Ed25519PublicKey) -> bytes:
    """Raw 32-byte public key."""
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public: bytes) -> str:
    """Short stable identifier of a raw public key (first 16 hex of its sha256)."""
    return hashlib.sha256(public).hexdigest()[:16]


@dataclass(frozen=True)
class SigningKey:
    """A vendor private key with its id; used only by vendor-side tools and tests."""

    private: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, pem: bytes) -> SigningKey:
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise SignatureError("private key is not an Ed25519 key")
        return cls(key)

    def to_pem(self) -> bytes:
        return self.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @property
    def public(self) -> bytes:
        return public_key_bytes(self.private.public_key())

    @property
    def key_id(self) -> str:
        return key_id(self.public)

    def sign(self, message: bytes) -> str:
        """Return the base64 signature of ``message``."""
        return b64(self.private.sign(message))


def verify_signature(
    message: bytes, signature: str, kid: str, algorithm: str, trusted: Mapping[str, bytes]
) -> None:
    """Check ``signature`` over ``message`` by trusted key ``kid``; raise SignatureError."""
    if algorithm != ALGORITHM:
        raise SignatureError(f"unsupported signature algorithm {algorithm!r}; only ed25519")
    public = trusted.get(kid)
    if public is None:
        raise SignatureError(f"signed by unknown key id {kid!r}; this box does not trust it")
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(unb64(signature), message)
    except (InvalidSignature, ValueError) as exc:
        raise SignatureError(f"signature does not verify with key {kid!r}") from exc


def load_public_keys(texts: Mapping[str, str]) -> dict[str, bytes]:
    """Map key id -> raw key from base64 public keys, checking each id matches its key."""
    keys: dict[str, bytes] = {}
    for kid, text in texts.items():
        raw = unb64(text.strip())
        if len(raw) != 32 or key_id(raw) != kid:
            raise SignatureError(f"public key file for {kid!r} is corrupt")
        keys[kid] = raw
    return keys

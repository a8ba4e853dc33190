"""The fleet's join token: 256 random bits in a file only its owner can read.

Ray's token authentication (``RAY_AUTH_MODE=token``) checks it on every connection to the
head, so whoever holds the file may join boxes and run code on the fleet: copy it to a new
box over SSH and keep it 0600. Plain Python; no Ray.
"""

from __future__ import annotations

import secrets
import stat
from pathlib import Path

from fleet.errors import JoinRefusedError
from storage.files import atomic_write

TOKEN_BYTES = 32


def new_token() -> str:
    """256 bits of entropy, hex encoded (the format ``ray get-auth-token`` writes)."""
    return secrets.token_hex(TOKEN_BYTES)


def write_token(path: Path, token: str) -> Path:
    """Write ``token`` to ``path`` with mode 0600, atomically (temp file, fsync, replace)."""
    atomic_write(path, token, 0o600)  # no newline: Ray compares the bytes
    return path


def read_token(path: Path | None) -> str:
    """The token in ``path``; JoinRefusedError if there is none or others may read it."""
    if path is None:
        raise JoinRefusedError("joining a fleet needs the head's token: --token FILE")
    try:
        mode = path.stat().st_mode
        text = path.read_text().strip()
    except OSError as exc:
        raise JoinRefusedError(f"cannot read the fleet token {path}: {exc}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise JoinRefusedError(
            f"the fleet token {path} is readable by others (mode {stat.S_IMODE(mode):o}); "
            "run chmod 600 on it")
    if len(text) < 32 or not all(c in "0123456789abcdef" for c in text):
        raise JoinRefusedError(f"{path} does not hold a fleet token")
    return text

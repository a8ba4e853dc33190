"""Files that are either wholly old or wholly new after a crash.

``atomic_write`` is the one way the box writes a file that must survive a power cut: a
temp file in the same directory, fsync, ``os.replace``, fsync of the directory. (The boot
path in ``firmware.boot`` keeps a standard-library copy on purpose: it must run before the
box's packages can be trusted.)
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def ensure_dir(path: Path, mode: int = 0o700) -> Path:
    """Create ``path`` (and parents) with ``mode`` if missing; return it."""
    path = Path(path)
    if not path.is_dir():
        path.mkdir(parents=True, mode=mode, exist_ok=True)
        os.chmod(path, mode)
    return path


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (best effort where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: Path, data: bytes | str, mode: int = 0o600) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` atomically, with permissions ``mode``."""
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    ensure_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def write_json_atomic(path: Path, data: Any, mode: int = 0o644) -> None:
    """``data`` as indented, key-sorted JSON, written atomically."""
    atomic_write(path, json.dumps(data, indent=2, sort_keys=True) + "\n", mode)


def read_limited(path: Path, max_bytes: int) -> bytes:
    """Read at most ``max_bytes`` + 1 bytes so callers can refuse oversize files cheaply."""
    with open(path, "rb") as fh:
        return fh.read(max_bytes + 1)

"""The remote endpoints this box may overflow to, kept in the box's database.

A remote is a name, an OpenAI base URL and the models it serves (``appliance.egress``);
its API key is written to ``<data_dir>/remotes/<name>.key`` (mode 0600, atomically) and
never enters the database, a log line, an audit row or an answer. The admin API is the
only writer (``appliance fleet add-remote`` calls it), so the list is read from the
database once and kept in memory; the request path reads it without I/O.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from urllib.parse import urlsplit

from appliance.egress import NAME_RE, Remote
from appliance.errors import ApplianceError, RemoteNotFoundError
from appliance.store import Store
from storage.db import immediate
from storage.files import atomic_write

log = logging.getLogger(__name__)
MAX_KEY_BYTES = 4096


def check_url(url: str) -> str:
    """The base URL without a trailing slash; ApplianceError (400) unless http(s)."""
    url = url.strip().rstrip("/")
    try:
        parts = urlsplit(url)
        _ = parts.port  # a port that is not a number is refused here
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ApplianceError(f"remote URL {url!r} must be http(s)://HOST[:PORT]/PATH, the "
                             "endpoint's OpenAI base URL (e.g. https://cloud.example/v1)")
    if parts.username or parts.password:
        raise ApplianceError("put the remote's key in --key-file, not in its URL")
    return url


def check_key(key: str) -> str:
    key = key.strip()
    if (not key or len(key) > MAX_KEY_BYTES or any(c.isspace() for c in key)
            or not key.isascii() or not key.isprintable()):
        raise ApplianceError("the remote's key must be one line of 1 to "
                             f"{MAX_KEY_BYTES} printable ASCII characters without spaces")
    return key


class RemoteBook:
    """Registered remotes (in ``store``) and their keys (under ``key_dir``)."""

    def __init__(self, store: Store, key_dir: Path) -> None:
        self.store = store
        self.key_dir = key_dir
        self._remotes: dict[str, Remote] = {}
        self._keys: dict[str, str] = {}
        self.reload()

    def reload(self) -> None:
        """Read the list from the database (blocking)."""
        with self.store.lock:
            rows = self.store.db.execute(
                "SELECT name, url, models, added_at FROM remotes ORDER BY added_at, name"
            ).fetchall()
        self._remotes = {r[0]: Remote(r[0], r[1], json.loads(r[2]), r[3]) for r in rows}
        self._keys = {}

    def list(self) -> list[Remote]:
        return list(self._remotes.values())

    def key(self, name: str) -> str:
        """The remote's API key, read from its file once (blocking the first time)."""
        if name not in self._keys:
            try:
                self._keys[name] = (self.key_dir / f"{name}.key").read_text().strip()
            except OSError as exc:
                raise ApplianceError(f"the key file of remote {name!r} cannot be read "
                                     f"({exc.strerror}); add the remote again") from exc
        return self._keys[name]

    def add(self, name: str, url: str, key: str, models: dict[str, str],
            replace: bool = False) -> Remote:
        """Register (or with ``replace`` re-register) a remote (blocking)."""
        if not NAME_RE.match(name):
            raise ApplianceError("remote name must be 1-64 letters, digits, '.', '_' or '-',"
                                 " starting with a letter or digit")
        remote = Remote(name, check_url(url), dict(models), time.time())
        key = check_key(key)
        if name in self._remotes and not replace:
            raise ApplianceError(f"a remote named {name!r} exists; remove it first or "
                                 "pass --replace")
        atomic_write(self.key_dir / f"{name}.key", key + "\n", mode=0o600)
        with immediate(self.store.db):
            self.store.db.execute(
                "INSERT OR REPLACE INTO remotes (name, url, models, added_at) "
                "VALUES (?, ?, ?, ?)", [name, remote.url, json.dumps(remote.models),
                                        remote.added_at])
        self._remotes[name] = remote
        self._keys[name] = key
        log.info("remote %s added (%s)", name, remote.url)
        return remote

    def remove(self, name: str) -> Remote:
        """Forget a remote and delete its key file (blocking)."""
        remote = self._remotes.get(name)
        if remote is None:
            raise RemoteNotFoundError(name, list(self._remotes))
        with immediate(self.store.db):
            self.store.db.execute("DELETE FROM remotes WHERE name = ?", [name])
        (self.key_dir / f"{name}.key").unlink(missing_ok=True)
        self._remotes.pop(name, None)
        self._keys.pop(name, None)
        log.info("remote %s removed", name)
        return remote

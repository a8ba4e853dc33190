"""The box's memory of which engine configuration passed its self-test on this machine.

One JSON file in the data directory, keyed by ``EngineSpec.trust_key`` (CPU, native library
version, model files, release), written atomically. Deleting it only costs a self-test on
the next load of each model.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

from storage.files import atomic_write

log = logging.getLogger(__name__)

TRUST_FILE = "engine-trust.json"


class TrustFile:
    """A ``TrustBook`` (see ``engines.worker.supervisor``) kept in one JSON file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable %s (models will self-test again): %s",
                        self.path, exc)
            return {}
        return data if isinstance(data, dict) else {}

    def recall(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            record = self._read().get(key)
        return record if isinstance(record, dict) else None

    def remember(self, key: str, record: dict[str, Any]) -> None:
        with self._lock:
            data = self._read()
            data[key] = record
            atomic_write(self.path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode(),
                         mode=0o600)

    def records(self) -> list[dict[str, Any]]:
        """Every remembered choice (for `appliance doctor`)."""
        with self._lock:
            return [r for r in self._read().values() if isinstance(r, dict)]

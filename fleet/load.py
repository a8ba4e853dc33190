"""Requests in flight on each replica, as the head sees them (it is the fleet's only
ingress, so its view is the whole load). Plain data; no Ray."""

from __future__ import annotations

import threading


class ReplicaLoad:
    """Streams in flight per replica id; shared by the head's fleet engines and read by
    the fleet status (``/admin/fleet``, ``appliance fleet status``, the TUI)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ongoing: dict[str, int] = {}

    def begin(self, replica: str) -> None:
        with self._lock:
            self._ongoing[replica] = self._ongoing.get(replica, 0) + 1

    def end(self, replica: str) -> None:
        with self._lock:
            left = self._ongoing.get(replica, 0) - 1
            if left > 0:
                self._ongoing[replica] = left
            else:
                self._ongoing.pop(replica, None)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._ongoing)

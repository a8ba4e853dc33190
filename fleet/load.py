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


def slot_gauges(replicas: int, slots_per_replica: int, in_flight: int) -> dict[str, float]:
    """A model's slot gauges across the fleet, as an engine's ``stats()`` reports them on one
    box: ``slots`` (running replicas × each one's slots), ``active_slots`` (generations in
    flight through the head, at most ``slots``) and ``queue_depth`` (the rest, waiting in
    Serve's queues). The cloud-overflow rule (``appliance.egress``) reads these."""
    slots = max(0, replicas) * max(0, slots_per_replica)
    busy = max(0, in_flight)
    return {"replicas": float(max(0, replicas)), "slots": float(slots),
            "active_slots": float(min(busy, slots)), "queue_depth": float(max(0, busy - slots))}

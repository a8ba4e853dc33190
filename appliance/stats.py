"""Live figures for the admin dashboard, computed from the app's Prometheus metrics."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import psutil
from prometheus_client import CollectorRegistry

from appliance.doctor import gpu_info


def _totals(registry: CollectorRegistry) -> dict[str, float]:
    totals = {"requests": 0.0, "tokens_out": 0.0, "images": 0.0, "queue_depth": 0.0,
              "active_slots": 0.0}
    buckets: dict[float, float] = {}
    for fam in registry.collect():
        for s in fam.samples:
            if s.name == "appliance_requests_total":
                totals["requests"] += s.value
            elif s.name == "appliance_tokens_out_total":
                totals["tokens_out"] += s.value
            elif s.name == "appliance_images_total":
                totals["images"] += s.value
            elif s.name == "appliance_engine_queue_depth":
                totals["queue_depth"] += s.value
            elif s.name == "appliance_engine_active_slots":
                totals["active_slots"] += s.value
            elif s.name == "appliance_request_latency_seconds_bucket":
                le = float(s.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + s.value
    totals["p95_latency_s"] = _quantile(buckets, 0.95)
    return totals


def _quantile(buckets: dict[float, float], q: float) -> float:
    """Upper bound of the histogram bucket holding quantile ``q`` (0 when empty)."""
    if not buckets:
        return 0.0
    ordered = sorted(buckets.items())
    total = ordered[-1][1]
    if total <= 0:
        return 0.0
    for le, count in ordered:
        if count >= q * total:
            return le if le != float("inf") else ordered[-2][0] if len(ordered) > 1 else 0.0
    return 0.0


@dataclass
class StatsSampler:
    """Turns counters into rates by remembering the previous reading."""

    registry: CollectorRegistry
    history: deque[tuple[float, dict[str, float]]] = field(
        default_factory=lambda: deque(maxlen=2))
    _gpu: tuple[float, list[str]] = (0.0, [])
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def sample(self) -> dict[str, Any]:
        """Rates since the previous call (thread-safe; it is called from worker threads)."""
        with self._lock:
            return self._sample()

    def _sample(self) -> dict[str, Any]:
        now = time.monotonic()
        totals = _totals(self.registry)
        rates = {"requests": 0.0, "tokens_out": 0.0, "images": 0.0}
        if self.history:
            then, old = self.history[-1]
            span = now - then
            if span > 0:
                rates = {k: max(0.0, (totals[k] - old[k]) / span) for k in rates}
        self.history.append((now, totals))
        if now - self._gpu[0] > 30:
            self._gpu = (now, gpu_info())
        mem = psutil.virtual_memory()
        return {
            "requests_total": totals["requests"], "requests_per_s": rates["requests"],
            "tokens_out_total": totals["tokens_out"], "tokens_per_s": rates["tokens_out"],
            "images_total": totals["images"], "images_per_s": rates["images"],
            "queue_depth": totals["queue_depth"], "active_slots": totals["active_slots"],
            "p95_latency_s": totals["p95_latency_s"],
            "cpu_percent": psutil.cpu_percent(interval=None),
            "ram_used_bytes": mem.total - mem.available, "ram_total_bytes": mem.total,
            "gpu": self._gpu[1],
        }


class LogRing(logging.Handler):
    """Keeps the most recent warnings and errors for `GET /admin/logs`."""

    def __init__(self, size: int = 500) -> None:
        super().__init__(level=logging.WARNING)
        self.records: deque[dict[str, Any]] = deque(maxlen=size)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.records.append({"ts": record.created, "level": record.levelname,
                                 "logger": record.name, "message": record.getMessage()})
        except Exception:  # a broken log call must not break the caller
            self.handleError(record)

    def tail(self, limit: int, query: str | None) -> list[dict[str, Any]]:
        rows = [r for r in self.records
                if not query or query.lower() in (r["message"] + r["logger"]).lower()]
        return rows[-limit:]

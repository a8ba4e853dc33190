"""What the running box holds besides its store, guard, registry and lifecycle."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from appliance.stats import LogRing, StatsSampler


@dataclass
class Runtime:
    """Process facts the admin and ops routes show or use (reached through ``RuntimeDep``)."""

    started_at: float
    sampler: StatsSampler  # host and GPU gauges for /admin/status
    log_ring: LogRing  # recent warnings and errors for /admin/logs
    trusted_keys: Mapping[str, bytes] | None  # vendor keys given in code (tests), or None
    probe_nonces: set[str] = field(default_factory=set)  # update probes answered, once each
    fleet: Any = None  # the fleet client on a fleet head

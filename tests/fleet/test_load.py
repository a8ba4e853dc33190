"""The fleet's slot gauges for a model (no Ray): what the cloud-overflow rule reads."""

from __future__ import annotations

from appliance.egress import Load
from fleet.load import slot_gauges


def test_slots_are_replicas_times_slots_and_the_rest_waits() -> None:
    g = slot_gauges(replicas=2, slots_per_replica=4, in_flight=3)
    assert g == {"replicas": 2.0, "slots": 8.0, "active_slots": 3.0, "queue_depth": 0.0}
    assert not Load.from_stats(g).saturated
    g = slot_gauges(replicas=2, slots_per_replica=4, in_flight=11)
    assert (g["active_slots"], g["queue_depth"]) == (8.0, 3.0)
    assert Load.from_stats(g).saturated


def test_eight_in_flight_on_eight_slots_is_saturated() -> None:
    assert Load.from_stats(slot_gauges(2, 4, 8)).saturated
    assert not Load.from_stats(slot_gauges(2, 4, 7)).saturated


def test_no_replica_running_reports_no_slots() -> None:
    """Scaled to zero: no slots, so the overflow rule sees no saturation figure (None) and
    the request gets 503 model_starting from the engine instead of leaving."""
    g = slot_gauges(replicas=0, slots_per_replica=4, in_flight=2)
    assert g["slots"] == 0.0 and g["queue_depth"] == 2.0
    assert Load.from_stats(g) is None

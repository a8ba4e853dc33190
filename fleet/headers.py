"""Say in the response which box served a request: ``X-Appliance-Node: <box>``, and
which replica of the model on it: ``X-Appliance-Replica: <Serve's replica id>``.

An engine that learns where a request runs calls ``note_placement``; the request lifecycle
(``appliance.lifecycle.note_box``) adds it to the answer and to the usage row. Streams learn
their box before their first event, so the header is always in time. No Ray.
"""

from __future__ import annotations

from appliance.lifecycle import NODE_HEADER, note_box, note_header

__all__ = ["NODE_HEADER", "REPLICA_HEADER", "note_placement"]

REPLICA_HEADER = "x-appliance-replica"


def note_placement(box: str, replica: str = "") -> None:
    """Record that the current request runs on ``box`` (in ``replica``): the response
    headers and the usage row name it (no-op outside a request)."""
    note_box(box)
    if replica:
        note_header(REPLICA_HEADER, replica)

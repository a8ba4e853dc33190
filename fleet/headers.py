"""Say in the response which box served a request: ``X-Appliance-Node: <box>``.

An engine that learns where a request runs calls ``note_placement``; the request lifecycle
(``appliance.lifecycle.note_header``) adds it to the answer. Streams learn their box
before their first event, so the header is always in time. No Ray.
"""

from __future__ import annotations

from appliance.lifecycle import note_header

NODE_HEADER = "x-appliance-node"


def note_placement(box: str) -> None:
    """Record that the current request runs on ``box`` (no-op outside a request)."""
    note_header(NODE_HEADER, box)

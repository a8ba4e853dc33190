"""What a replica's generation stream carries besides the engine's own events.

The events themselves (``TextDelta``, ``Finished``, ``Failed``) cross Ray as they are (frozen
dataclasses; engine errors pickle intact). Before them a replica sends one ``Placement``
saying where the request runs, so the head can name the box in a response header and in
the usage row. Plain data; no Ray.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Placement:
    """The box (and Ray node) whose replica serves a request, and that replica's id."""

    box: str
    node_id: str
    replica: str = ""

"""Errors of fleet mode; every one is a FleetError."""

from __future__ import annotations


class FleetError(Exception):
    """Root of every fleet error."""


class FleetUnavailableError(FleetError):
    """Fleet mode is configured but Ray is not installed or the cluster cannot be reached."""


class JoinRefusedError(FleetError):
    """A box may not join: no token, a token file others can read, or not in the licence."""


class NodeError(FleetError):
    """Starting, draining or stopping this box's Ray node failed."""

"""Errors raised by licensing; every one is a LicenseError.

The API maps them to HTTP by type: ``Unauthenticated`` -> 401; ``Forbidden`` and its
subclasses (``NotEntitled``, ``LicenceExpired``, ``LicenceMissing``, ``ClockTampered``) -> 403;
``RateLimited`` -> 429 with ``Retry-After``; ``NotFound`` -> 404; ``SeatLimitReached``,
``KeyLimitReached`` and ``InvalidInput`` -> 409/409/400; the file/format errors are for the
CLI and import endpoint.
"""

from __future__ import annotations


class LicenseError(Exception):
    """Root of every licensing error."""


class SignatureError(LicenseError):
    """A signature, key id or algorithm is not acceptable."""


class FormatError(LicenseError):
    """A document is not well-formed: bad JSON, too large, too deep, wrong type or fields."""


class WeakFingerprint(FormatError):
    """A fingerprint has too few independent components to bind a licence to one machine."""


class LicenceSuperseded(LicenseError):
    """An older licence than the newest one this box has installed (a renewal replaced it)."""


class FingerprintMismatch(LicenseError):
    """The licence is bound to another machine (two or more fingerprint components differ)."""


class LicenceDeactivated(LicenseError):
    """This licence was deactivated on this box (a receipt exists); it cannot come back."""


class LicenceNotYetValid(LicenseError):
    """The licence's valid-from time is still in the future."""


class InvalidInput(LicenseError):
    """An argument given by an admin or vendor is out of range (empty name, bad role...)."""


class NotFound(LicenseError):
    """A seat, key or other record does not exist."""


class SeatLimitReached(LicenseError):
    """Creating another seat would exceed the licensed seat count."""


class KeyLimitReached(LicenseError):
    """The seat already holds as many active API keys as allowed (a seat is one person)."""


class StateError(LicenseError):
    """Local licensing state (keys, state file) is missing or unreadable."""


class Unauthenticated(LicenseError):
    """No API key, an unknown key, or a revoked key (HTTP 401)."""


class Forbidden(LicenseError):
    """Authenticated but not allowed (HTTP 403)."""


class NotEntitled(Forbidden):
    """The licence does not cover the requested model or feature."""


class LicenceMissing(Forbidden):
    """No licence is installed (and no evaluation licence either)."""


class LicenceExpired(Forbidden):
    """The licence is past its grace period; inference is refused, admin still works."""

    def __init__(self, licence_id: str, message: str) -> None:
        super().__init__(message)
        self.licence_id = licence_id


class ClockTampered(Forbidden):
    """Trusted time went backwards or local state was restored; needs an admin ack."""


class RateLimited(LicenseError):
    """A per-seat limit is exhausted; retry after ``retry_after`` seconds (HTTP 429)."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = max(1, int(retry_after))


class SeatBusy(RateLimited):
    """The seat already runs ``max_concurrent`` requests (a caller may wait its turn)."""


class BoxNotLicensed(Forbidden):
    """A box may not join the fleet: the licence does not list it, or every box it allows
    is bound to another machine, or it covers one box only."""

"""Errors raised by firmware (offline updates); every one is an UpdateError.

The CLI turns each into a one-line message and a non-zero exit; the API layer maps them
to HTTP responses by type. ``BundleError`` and its subclasses mean "refused before
anything was written"; the others happen while applying or operating slots.
"""


class UpdateError(Exception):
    """Root of every firmware error."""


class BundleError(UpdateError):
    """The bundle is refused; nothing was written."""


class BundleFormatError(BundleError):
    """The file is not a well-formed bundle (magic, lengths, JSON, truncation, trailing data)."""


class BundleSignatureError(BundleError):
    """The manifest signature, algorithm or key id is not acceptable."""


class BundleExpiredError(BundleError):
    """The bundle's expiry has passed (or it claims to be created in the future)."""


class IncompatibleError(BundleError):
    """The bundle is not for this hardware/architecture or bundle type."""


class DowngradeError(BundleError):
    """Anti-rollback: the version is not newer than the installed one or below the floor."""


class UnsafePathError(BundleError):
    """A payload member has an absolute path, ``..``, or is a link or device."""


class PayloadError(BundleError):
    """A payload's size or sha256 does not match the signed manifest."""


class LimitError(BundleError):
    """The bundle exceeds a size limit of this box (``Limits``)."""


class ApplyError(UpdateError):
    """Applying a verified bundle failed; the box was left on (or returned to) a good state."""


class LockedError(ApplyError):
    """Another update is in progress."""


class HealthCheckError(ApplyError):
    """The service did not become ready or could not serve an inference in time."""


class ServiceError(ApplyError):
    """Starting, stopping or restarting the service failed."""


class SlotError(UpdateError):
    """The A/B slot layout is missing, corrupt, or has nothing to roll back to."""

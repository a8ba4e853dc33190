"""Errors raised by licensing; every one is a LicenseError."""


class LicenseError(Exception):
    """Root of every licensing error."""


class SignatureError(LicenseError):
    """A signature, key id or algorithm is not acceptable."""

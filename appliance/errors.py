"""Errors raised by the appliance layer; every one is an ApplianceError."""


class ApplianceError(Exception):
    """Root of every appliance error."""


class ModelStoreError(ApplianceError):
    """A model pack is missing, malformed or fails verification."""


class ModelNotFoundError(ApplianceError):
    """No model of that name in the store."""

    def __init__(self, name: str, available: list[str]) -> None:
        self.name = name
        self.available = available
        super().__init__(
            f"The model '{name}' does not exist; available: {', '.join(available) or 'none'}"
        )


class ConfigError(ApplianceError):
    """The configuration file or environment is invalid."""


class ClientGoneError(ApplianceError):
    """The client closed the connection before its answer was ready (metered as 499)."""

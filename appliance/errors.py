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


class ResponseNotFoundError(ApplianceError):
    """No stored response of that id for this seat (absent, expired or another seat's)."""

    def __init__(self, response_id: str) -> None:
        self.response_id = response_id
        super().__init__(f"Response with id '{response_id}' not found.")

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


class RemoteNotFoundError(ApplianceError):
    """No remote endpoint of that name is registered."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"no remote named {name!r}; registered: {', '.join(known) or 'none'}")


class RemoteError(ApplianceError):
    """A remote endpoint answered a request it was sent with an error (502)."""


class RemoteUnavailableError(RemoteError):
    """A remote endpoint could not be reached or is itself overloaded (503, Retry-After)."""

    def __init__(self, message: str, retry_after: float = 5.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after

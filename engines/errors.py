"""Errors raised by engines; every one is an EngineError.

The API layer maps these to HTTP responses by type in one place.
"""


class EngineError(Exception):
    """Root of every engine error."""


class ModelLoadError(EngineError):
    """A model file could not be loaded (corrupt, unsupported, out of memory)."""


class ContextLengthError(EngineError):
    """The prompt (plus requested tokens) does not fit the model's context."""

    def __init__(self, prompt_tokens: int, n_ctx: int, max_tokens: int | None = None) -> None:
        self.prompt_tokens = prompt_tokens
        self.n_ctx = n_ctx
        self.max_tokens = max_tokens
        # OpenAI's wording, which clients (litellm's ContextWindowExceededError) recognise
        msg = f"This model's maximum context length is {n_ctx} tokens. However, "
        if max_tokens:
            msg += (f"you requested {prompt_tokens + max_tokens} tokens ({prompt_tokens} in "
                    f"the messages, {max_tokens} in the completion). Please reduce the "
                    "length of the messages or completion.")
        else:
            msg += (f"your messages resulted in {prompt_tokens} tokens. Please reduce the "
                    "length of the messages.")
        super().__init__(msg)

    def __reduce__(self) -> tuple:  # crosses the worker pipe intact
        return (type(self), (self.prompt_tokens, self.n_ctx, self.max_tokens))


class PromptTooLongError(ContextLengthError):
    """A prompt so long it cannot fit whatever its tokens: refused before tokenising it."""

    def __init__(self, chars: int, n_ctx: int) -> None:
        self.chars = chars
        self.prompt_tokens, self.n_ctx, self.max_tokens = chars, n_ctx, None
        EngineError.__init__(
            self, f"This model's maximum context length is {n_ctx} tokens. However, your "
                  f"messages are {chars} characters, more than that context can hold. "
                  "Please reduce the length of the messages.")

    def __reduce__(self) -> tuple:
        return (type(self), (self.chars, self.n_ctx))


class InputTooLongError(ContextLengthError):
    """One input of a batch (an embedding request's) is longer than the model reads; the
    message names its index."""

    def __init__(self, index: int, size: int, n_ctx: int, unit: str = "tokens") -> None:
        self.index, self.size, self.unit = index, size, unit
        self.prompt_tokens, self.n_ctx, self.max_tokens = size, n_ctx, None
        EngineError.__init__(
            self, f"This model's maximum context length is {n_ctx} tokens. However, "
                  f"input[{index}] is {size} {unit} long, more than that. Please shorten "
                  "or split it.")

    def __reduce__(self) -> tuple:
        return (type(self), (self.index, self.size, self.n_ctx, self.unit))


class InvalidRequestError(EngineError):
    """Request parameters the engine cannot honour (e.g. a JSON schema it cannot compile)."""


class OverloadedError(EngineError):
    """The engine's queue is full; retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        self.retry_after = retry_after
        super().__init__(message)

    def __reduce__(self) -> tuple:  # crosses the worker pipe intact
        return (type(self), (str(self), self.retry_after))


class EngineClosedError(EngineError):
    """The engine was closed (model unloaded) while the request was pending."""


class InputError(EngineError):
    """Input data (an image, say) is malformed or too large."""


class ProviderUnavailableError(EngineError):
    """A requested execution provider or accelerator is not usable on this box."""


class EngineCrashedError(EngineError):
    """The engine's worker process died (a signal or an exit) with the request inside it,
    or is being restarted; retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float = 2.0) -> None:
        self.retry_after = retry_after
        super().__init__(message)

    def __reduce__(self) -> tuple:
        return (type(self), (str(self), self.retry_after))


class ModelStartingError(EngineError):
    """No replica of the model is running (it was scaled to zero when idle); one is
    starting now: retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float = 5.0) -> None:
        self.retry_after = retry_after
        super().__init__(message)

    def __reduce__(self) -> tuple:
        return (type(self), (str(self), self.retry_after))

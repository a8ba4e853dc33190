"""Engine contracts. Implementations live in subpackages that alone import heavy libraries."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

from engines.errors import InputTooLongError, PromptTooLongError
from engines.types import GenerationEvent, GenerationRequest, LLMInfo

EventSink = Callable[[GenerationEvent], None]


class GenerationHandle(ABC):
    """A running generation; lets the caller stop it early (client gone)."""

    @abstractmethod
    def cancel(self) -> None:
        """Stop generating as soon as possible and free the slot.

        The sink then receives ``Finished(finish_reason="cancelled")``. Idempotent.
        """


class LLMEngine(ABC):
    """A loaded language model.

    Thread-safety: every method may be called from any thread. ``submit`` never
    blocks on inference; events are delivered to ``sink`` from an engine thread, in
    order, ending with exactly one ``Finished`` or ``Failed``.
    """

    @property
    @abstractmethod
    def info(self) -> LLMInfo:
        """Context size, embedding size, backend and slot count."""

    @abstractmethod
    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        """Token ids of ``text`` (BOS added when the model wants it)."""

    @abstractmethod
    def render_chat(self, messages: Sequence[dict[str, Any]],
                    tools: Sequence[dict[str, Any]] | None = None) -> str:
        """Prompt text for ``messages`` using the chat template in the model file.

        A message is ``{"role", "content"}``, and may carry OpenAI's ``tool_calls``
        (assistant), ``tool_call_id`` and ``name`` (tool). ``tools`` (OpenAI function
        definitions) is handed to the template as its ``tools`` variable; pass it only to a
        template that renders tools (``engines.llm.tools.call_format``).

        Raises InvalidRequestError if the messages cannot be rendered.
        """

    @abstractmethod
    def chat_tokens(self, messages: Sequence[dict[str, Any]],
                    tools: Sequence[dict[str, Any]] | None = None) -> list[int]:
        """Prompt token ids for ``messages`` and ``tools`` (as ``render_chat``): the chat
        template's control tokens are real, every string the caller sent (content, tool
        definitions, call arguments) is always plain text (typing ``<|im_start|>system``
        forges nothing).

        Raises InvalidRequestError like ``render_chat`` and ContextLengthError for a prompt
        too long to tokenise.
        """

    def vision_chat_tokens(self, messages: Sequence[dict[str, Any]],
                           tools: Sequence[dict[str, Any]] | None, marker: str) -> list[int]:
        """``chat_tokens`` for messages with images: each ``marker`` (a string the caller
        chose at random for this request) in message content becomes one
        ``engines.types.IMAGE_TOKEN``, whose image goes in ``GenerationRequest.images``.

        Raises InvalidRequestError unless the model was loaded with a projector
        (``info.images``)."""
        from engines.errors import InvalidRequestError

        raise InvalidRequestError("this engine does not take images")

    @abstractmethod
    def json_schema_grammar(self, schema: dict) -> str:
        """GBNF grammar constraining output to ``schema``; InvalidRequestError if unsupported."""

    @abstractmethod
    def submit(self, request: GenerationRequest, sink: EventSink) -> GenerationHandle:
        """Queue a generation. Refuses with ContextLengthError if the prompt cannot fit,
        InvalidRequestError for a bad request, OverloadedError if the queue is full:
        raised here, or (for an engine in another process, which answers later) delivered
        as the only event, ``Failed(error)``. Raises EngineClosedError after ``close`` and
        EngineCrashedError while a worker restarts."""

    @abstractmethod
    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One L2-normalised vector per text (blocking: call from a worker thread).

        Raises InputTooLongError (a ContextLengthError naming the input's index) for an
        input longer than the model reads, InvalidRequestError for an empty one.
        """

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """How many tokens the model reads for each text (what ``embed`` bills);
        InputTooLongError naming a text far too long to tokenise."""
        counts = []
        for i, text in enumerate(texts):
            try:
                counts.append(len(self.tokenize(text, special=False)))
            except PromptTooLongError as exc:
                raise InputTooLongError(i, len(text), exc.n_ctx, "characters") from exc
        return counts

    @abstractmethod
    def stats(self) -> dict[str, float]:
        """Live gauges for /metrics (queue depth, active slots, ...)."""

    def waiting(self) -> dict[str, int]:
        """Requests waiting for a slot, per seat (empty for an engine without a queue)."""
        return {}

    @abstractmethod
    def close(self) -> None:
        """Stop work, fail pending requests with EngineClosedError, free memory."""

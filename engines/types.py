"""Plain data passed between the API layer and engines."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

FinishReason = Literal["stop", "length", "cancelled"]


@dataclass(frozen=True)
class Sampling:
    """How to pick tokens. ``grammar`` is GBNF text (JSON schemas are compiled by the engine)."""

    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    grammar: str | None = None
    # Lazy grammar: free text until one of these regexes matches, the grammar from there on
    # (from the match's first group when it has one). Empty: the grammar applies throughout.
    grammar_triggers: tuple[str, ...] = ()
    presence_penalty: float = 0.0  # OpenAI's: subtract once for a token already generated
    frequency_penalty: float = 0.0  # OpenAI's: subtract per time it was generated
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to its logit)


@dataclass(frozen=True)
class GenerationRequest:
    """A tokenised prompt and its sampling parameters.

    ``seat`` orders the engine's queue (fair share between seats, weighted by
    ``seat_weight``); a ``background`` seat is served only when interactive seats leave
    room."""

    prompt_tokens: tuple[int, ...]
    sampling: Sampling = field(default_factory=Sampling)
    seat: str = ""
    seat_weight: float = 1.0
    background: bool = False


@dataclass(frozen=True)
class TextDelta:
    """New text produced by one or more tokens (``n_tokens``)."""

    text: str
    n_tokens: int


@dataclass(frozen=True)
class Finished:
    """Generation ended. Always the last event of a successful stream."""

    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0  # prompt tokens whose KV was reused, not read again


@dataclass(frozen=True)
class Failed:
    """Generation failed; the last event of a failed stream."""

    error: Exception


GenerationEvent = TextDelta | Finished | Failed


@dataclass(frozen=True)
class LLMInfo:
    """What an LLM engine reports about its loaded model."""

    n_ctx: int
    n_ctx_train: int
    n_embd: int
    backend: str  # "cpu" or "cuda"
    n_gpu_layers: int
    slots: int  # how many sequences decode concurrently
    chat_template: str | None

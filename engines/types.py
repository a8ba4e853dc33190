"""Plain data passed between the API layer and engines."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

FinishReason = Literal["stop", "length", "cancelled"]
MAX_TOP_LOGPROBS = 20  # alternatives per token a request may ask for (OpenAI's bound)
#: Where one image goes in a prompt's token ids (``GenerationRequest.images``, in order).
IMAGE_TOKEN = -1
MAX_IMAGES = 8  # images in one request


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
    repetition_penalty: float = 1.0  # llama.cpp's repeat penalty over the completion; 1 off


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
    logprobs: int | None = None  # report each token's logprob and this many alternatives
    echo: bool = False  # send the prompt's tokens first (``PromptTokens``)
    # Encoded images (JPEG, PNG or WebP bytes), one per IMAGE_TOKEN in the prompt, in
    # order; decoded by the engine (in its worker), for a model loaded with a projector.
    images: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class TokenLogprob:
    """A token with its log-probability under the model, and the likeliest alternatives.

    ``logprob`` is the log-softmax of the raw model logits at that position, before
    penalties, logit bias, grammar or temperature: the model's own distribution, which
    is what OpenAI reports, not the one the sampler drew from. It is None for the first
    prompt token (nothing precedes it) and for prompt tokens echoed without logprobs.
    ``top`` holds up to the requested number of alternatives, likeliest first (the
    chosen token among them only if it is one of the likeliest)."""

    token: int
    piece: bytes  # the bytes the token stands for (part of a UTF-8 character possibly)
    logprob: float | None = None
    top: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class PromptTokens:
    """The prompt, token by token: the first event of a request with ``echo``. With
    ``logprobs`` each token after the first carries its logprob given the ones before."""

    tokens: tuple[TokenLogprob, ...]


@dataclass(frozen=True)
class TextDelta:
    """New text produced by one or more tokens (``n_tokens``).

    ``logprobs`` (when the request asked) covers the same tokens, in order; the last
    delta of a stream may carry tokens whose text a stop string removed (``text`` then
    empty)."""

    text: str
    n_tokens: int
    logprobs: tuple[TokenLogprob, ...] = ()


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


GenerationEvent = PromptTokens | TextDelta | Finished | Failed


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
    purpose: str = "chat"  # "embeddings": a sentence-embedding model that cannot generate
    images: bool = False  # loaded with a projector: prompts may hold images

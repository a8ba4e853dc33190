"""What a request consumed, set by handlers on ``request.state.usage`` and recorded once."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class UsageRecord:
    """Tokens and images one request used."""

    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    images: int = 0

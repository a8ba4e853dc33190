"""Log-probabilities from raw logits (pure numpy): the chosen token's and the likeliest.

The engine calls these only for requests that asked for logprobs; one call costs a
pass over the vocabulary (a log-sum-exp and a partial sort), well under a millisecond
for a 50k vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from engines.types import TokenLogprob


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """``logits - logsumexp(logits)`` in float64 (every value <= 0; exp sums to 1)."""
    x = np.asarray(logits, dtype=np.float64)
    shifted = x - x.max()
    return shifted - np.log(np.exp(shifted).sum())


def top_tokens(logprobs: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The ``k`` likeliest (token id, logprob), likeliest first; ties by lower id."""
    if k <= 0:
        return []
    k = min(k, logprobs.shape[0])
    part = np.argpartition(-logprobs, k - 1)[:k]
    order = sorted(part.tolist(), key=lambda t: (-float(logprobs[t]), t))
    return [(int(t), float(logprobs[t])) for t in order]


def token_logprob(logprobs: np.ndarray, token: int, k: int,
                  piece: Callable[[int], bytes]) -> TokenLogprob:
    """``token`` with its logprob and the ``k`` likeliest alternatives from ``logprobs``
    (the output of ``log_softmax``); ``piece`` gives a token's bytes."""
    top = tuple(TokenLogprob(t, piece(t), lp) for t, lp in top_tokens(logprobs, k))
    return TokenLogprob(token, piece(token), float(logprobs[token]), top)

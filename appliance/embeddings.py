"""What an embedding request asks for, checked before and shaped after the model runs
(pure: no I/O, no engine).

- Inputs: a string, a list of strings, or token arrays (one list of ids, or a list of
  them), which are OpenAI token ids (see ``openai_tokens``) decoded to text.
- ``dimensions``: the one rule for shortening vectors (``allowed_dimensions``). A model
  trained for it (Matryoshka) lists the sizes it may be cut to in its pack manifest
  (``truncatable_dimensions``); the vector is cut and renormalised. Any other model only
  accepts its native size, and anything else is a 400 naming ``dimensions``.
- Limits: inputs and tokens per request are settings (OpenAI's 2048 and 300,000 by
  default); the engine bounds memory per decode however large the request is.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from engines.errors import InvalidRequestError

TokenArrays = list[list[int]]


def split_input(value: str | list[str] | list[int] | list[list[int]]
                ) -> tuple[list[str], TokenArrays | None]:
    """(texts, None) for text input; ([], token arrays) for token-array input."""
    if isinstance(value, str):
        return [value], None
    if value and all(isinstance(v, int) for v in value):
        return [], [list(value)]  # type: ignore[arg-type]
    if value and all(isinstance(v, list) for v in value):
        return [], [list(v) for v in value]  # type: ignore[arg-type]
    return list(value), None  # type: ignore[arg-type]


def check_inputs(texts: Sequence[str], max_inputs: int) -> None:
    """400 for an empty request, too many inputs or an empty input (naming its index)."""
    if not texts:
        raise InvalidRequestError("'input' must hold at least one string or token array")
    if len(texts) > max_inputs:
        raise InvalidRequestError(f"'input' holds {len(texts)} items; this box takes at most "
                                  f"{max_inputs} per request (setting embed_max_inputs)")
    for i, text in enumerate(texts):
        if not text:
            raise InvalidRequestError(f"input[{i}] is empty")


def check_tokens(counts: Sequence[int], max_tokens: int) -> int:
    """The request's token total; 400 when it is over the per-request budget."""
    total = sum(counts)
    if total > max_tokens:
        raise InvalidRequestError(
            f"the inputs hold {total} tokens; this box embeds at most {max_tokens} tokens per "
            "request (setting embed_max_request_tokens): send them in smaller batches")
    return total


def allowed_dimensions(native: int, truncatable: Sequence[int] = ()) -> tuple[int, ...]:
    """The sizes a model's vectors may be returned at: its own, and the ones it was trained
    to be cut to."""
    return tuple(sorted({native, *(d for d in truncatable if 0 < d < native)}, reverse=True))


def check_dimensions(requested: int | None, native: int, truncatable: Sequence[int] = ()
                     ) -> int | None:
    """The size to cut vectors to (None: leave them whole); 400 naming ``dimensions``."""
    if requested is None or requested == native:
        return None
    allowed = allowed_dimensions(native, truncatable)
    if requested in allowed:
        return requested
    if len(allowed) == 1:
        raise InvalidRequestError(
            f"'dimensions' must be {native} (or left out) for this model: its vectors are "
            "not trained to be shortened")
    raise InvalidRequestError(f"'dimensions' must be one of {', '.join(map(str, allowed))} "
                              "for this model")


def shorten(vectors: Sequence[Sequence[float]], dims: int | None) -> list[list[float]]:
    """Keep the first ``dims`` components of each vector and make it unit length again."""
    if dims is None:
        return [list(v) for v in vectors]
    out = []
    for v in vectors:
        head = list(v[:dims])
        norm = math.sqrt(sum(x * x for x in head)) or 1.0
        out.append([x / norm for x in head])
    return out


def encode(vectors: Sequence[Sequence[float]], fmt: str) -> list[Any]:
    """Float lists, or base64 of little-endian float32 (what the openai client decodes)."""
    if fmt == "base64":
        return [base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode() for v in vectors]
    return [list(v) for v in vectors]

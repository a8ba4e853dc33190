"""Token logprobs in OpenAI's two response shapes (pure).

Chat completions: ``{"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}],
"refusal": None}``. Completions (the legacy shape): parallel lists ``tokens``,
``token_logprobs``, ``top_logprobs`` (one ``{token: logprob}`` dict per token) and
``text_offset`` (where each token starts in the choice's text, in characters). A streamed
choice sends each chunk's tokens in the same shape; offsets keep counting across chunks.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from typing import Any

from engines.types import TokenLogprob


def token_text(piece: bytes) -> str:
    """A token as text; a token that is part of a UTF-8 character is written as its
    bytes (``bytes:\\xe2\\x80``), as OpenAI does; ``bytes`` has the exact value."""
    try:
        return piece.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in piece)


def chat_content(entries: Sequence[TokenLogprob]) -> list[dict[str, Any]]:
    """``choices[].logprobs.content`` for these tokens."""
    return [{"token": token_text(e.piece), "logprob": e.logprob, "bytes": list(e.piece),
             "top_logprobs": [{"token": token_text(t.piece), "logprob": t.logprob,
                               "bytes": list(t.piece)} for t in e.top]}
            for e in entries]


def chat_logprobs(entries: Sequence[TokenLogprob]) -> dict[str, Any]:
    """``choices[].logprobs`` of a chat completion (or of one streamed chunk)."""
    return {"content": chat_content(entries), "refusal": None}


class LegacyLogprobs:
    """Builds the completions shape for one choice, chunk by chunk or all at once.

    ``text_offset`` counts characters of the choice's text from its start (the echoed
    prompt included), so it must see every token of the choice, in order."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._offset = 0

    def shape(self, entries: Sequence[TokenLogprob]) -> dict[str, Any]:
        """The four lists for ``entries``. An entry without a logprob (the first prompt
        token) has ``null`` for its logprob and its alternatives; the sampled token is
        always among its alternatives, as OpenAI returns it (up to ``logprobs`` + 1)."""
        out: dict[str, list[Any]] = {"tokens": [], "token_logprobs": [], "top_logprobs": [],
                                     "text_offset": []}
        for e in entries:
            out["tokens"].append(token_text(e.piece))
            out["token_logprobs"].append(e.logprob)
            if e.logprob is None:
                out["top_logprobs"].append(None)
            else:
                top = {token_text(t.piece): t.logprob for t in e.top}
                top.setdefault(token_text(e.piece), e.logprob)
                out["top_logprobs"].append(top)
            out["text_offset"].append(self._offset)
            self._offset += len(self._decoder.decode(e.piece))
        return out


def merge_legacy(parts: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """One legacy logprobs object from several ``LegacyLogprobs.shape`` results."""
    if not parts:
        return None
    return {key: [x for p in parts for x in p[key]]
            for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset")}

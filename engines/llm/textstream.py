"""Turn a stream of token bytes into text safely: whole UTF-8 characters, stop strings.

Pure logic shared by every LLM engine. Text that might be the start of a stop string is
held back until it is clear it is not, so a client never sees part of a stop string.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field


@dataclass
class TextStream:
    """Feed token bytes with ``push``; read text that is safe to emit.

    ``stopped`` becomes True once a stop string has appeared; the text before it has
    been emitted and nothing after it will be.
    """

    stop: tuple[str, ...] = ()
    stopped: bool = False
    _decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace")
    )
    _pending: str = ""

    def push(self, token_bytes: bytes) -> str:
        """Add one token's bytes; return the text now safe to send (may be empty)."""
        if self.stopped:
            return ""
        self._pending += self._decoder.decode(token_bytes)
        return self._release(final=False)

    def flush(self) -> str:
        """End of generation: return whatever is held back (minus any stop string)."""
        if self.stopped:
            return ""
        self._pending += self._decoder.decode(b"", final=True)
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        text = self._pending
        if not self.stop:
            self._pending = ""
            return text
        cut = _first_stop(text, self.stop)
        if cut is not None:
            self.stopped = True
            self._pending = ""
            return text[:cut]
        if final:
            self._pending = ""
            return text
        hold = _longest_stop_prefix_suffix(text, self.stop)
        self._pending = text[len(text) - hold :] if hold else ""
        return text[: len(text) - hold]


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    found = [i for s in stops if s and (i := text.find(s)) >= 0]
    return min(found) if found else None


def _longest_stop_prefix_suffix(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest end of ``text`` that is a proper prefix of some stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best

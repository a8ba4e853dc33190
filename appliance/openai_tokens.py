"""OpenAI token ids back to text, for /v1/embeddings requests that send token arrays.

OpenAI's API reads a token array as ids of its own tokenizer (cl100k_base for its
embedding models), and ``langchain_openai.OpenAIEmbeddings`` sends exactly that by default
(tiktoken; cl100k_base for any model name tiktoken does not know). Read as ids of the
box's model they would embed nonsense with a 200, so the box decodes them with the same
cl100k_base table (the pinned ``openai-cl100k-base`` pack) and embeds the text with the
model's own tokenizer. Pure: the table is parsed from bytes.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence

from engines.errors import InvalidRequestError

PACK = "openai-cl100k-base"
#: cl100k_base's special tokens (tiktoken decodes them to their text)
SPECIAL = {100257: b"<|endoftext|>", 100258: b"<|fim_prefix|>", 100259: b"<|fim_middle|>",
           100260: b"<|fim_suffix|>", 100276: b"<|endofprompt|>"}


class TokenTable:
    """cl100k_base: token id -> bytes."""

    def __init__(self, ranks: bytes) -> None:
        table: dict[int, bytes] = dict(SPECIAL)
        for n, line in enumerate(ranks.splitlines(), 1):
            if not line.strip():
                continue
            try:
                token, rank = line.split()
                table[int(rank)] = base64.b64decode(token, validate=True)
            except (ValueError, binascii.Error) as exc:
                raise ValueError(f"line {n} of the token table is malformed") from exc
        self._table = table
        self.size = max(table) + 1

    def decode(self, ids: Sequence[int], index: int) -> str:
        """The text of input ``index``; InvalidRequestError naming it for an unknown id."""
        parts = []
        for token in ids:
            piece = self._table.get(token) if isinstance(token, int) else None
            if piece is None:
                raise InvalidRequestError(
                    f"input[{index}] holds {token!r}, which is not an OpenAI cl100k_base "
                    f"token id (0..{self.size - 1}); token arrays are read as OpenAI's "
                    "token ids, or send the text instead")
            parts.append(piece)
        # as tiktoken does: a chunk cut inside a UTF-8 sequence keeps a replacement mark
        return b"".join(parts).decode("utf-8", errors="replace")

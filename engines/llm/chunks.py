"""Where a prompt's chunks end (pure): the grid every prompt is read on, and how much of
a shared prefix may be reused on it.

llama.cpp's results depend slightly on how a prompt is cut into micro-batches (flash
attention on a CPU), so a prompt is always read in the same chunks, whatever it shares a
step with, and a reused prefix must end where a request served alone ends a chunk. Then
cached output is identical to uncached output.

The grid is a function of the prompt's own tokens: a chunk ends every ``chunk`` tokens and
right after the prompt's first end-of-turn token (``marks``: the model's end-of-generation
tokens, ``<|im_end|>`` in ChatML) and the header the template writes before the next
turn's text (``\n<|im_start|>user\n``). That first turn is the system prompt (the chat
template's default one when the client sends none), so it ends on the grid and the next
question reuses it, header included, whatever its length: on a 64-token grid alone a
24-token default system turn was read again by every request. Only the first turn: each
extra boundary costs a short prompt one more step (a pass over the weights) when it is
read. A boundary depends only on the tokens before it (no boundary at all when another
header follows the turn), so two prompts that share a start share its boundaries.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence


def first_turn_end(prompt: Sequence[int], marks: Collection[int],
                   header: Sequence[int] = ()) -> int:
    """Position just after the first end-of-turn token and the ``header`` the template
    puts before the next turn's text (0: none, or another header follows the turn)."""
    for i, token in enumerate(prompt):
        if token in marks:
            end = i + 1 + len(header)
            return end if tuple(prompt[i + 1:end]) == tuple(header) else 0
    return 0


def chunk_end(length: int, pos: int, chunk: int, turn: int) -> int:
    """Where the chunk that starts at ``pos`` ends (exclusive), in a prompt of ``length``
    tokens whose first turn ends at ``turn``."""
    grid = min(length, (pos // chunk + 1) * chunk)
    return turn if pos < turn < grid else grid


def reusable(length: int, shared: int, chunk: int, turn: int) -> int:
    """The longest prefix of a ``length``-token prompt that may be taken from cells holding
    its first ``shared`` tokens: it ends on the grid and leaves the last token to read (its
    logits give the first sampled token). ``chunk`` 1 makes any prefix reusable."""
    limit = min(shared, length - 1)
    if limit <= 0:
        return 0
    grid = limit // chunk * chunk
    return turn if grid < turn <= limit else grid

"""Prompts to token ids with a model's vocabulary and chat template: what a request needs
before it can be admitted (its token count), apart from the weights that generate.

``BatchedLlamaEngine`` prepares its prompts with it; ``VocabLlamaEngine`` loads only the
vocabulary (a few MB, no weights) so that a process which never generates (a fleet head's
prompt worker) tokenises exactly as the replicas do.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from typing import Any

from engines.errors import EngineClosedError, InvalidRequestError, PromptTooLongError
from engines.llm.chat import render_chat, render_chat_segments
from engines.llm.grammar import check_grammar, check_schema, json_string_chars
from engines.llm.lowlevel import Model, Sampler
from engines.types import IMAGE_TOKEN, LLMInfo

EMBED_CTX = 2048  # tokens per text for embed(); capped at the model's training context
# No token of a real vocabulary is this long: text longer than this many characters per
# token of context cannot fit, and is refused without tokenising (a 30 MB message would
# otherwise keep a worker busy for seconds).
MAX_CHARS_PER_TOKEN = 64


class PromptBuilder:
    """Tokenise text and chats for one loaded ``model`` whose context holds ``n_ctx``
    tokens per request. ``lock`` is held while the model is used (its owner takes it to
    close the model); a closed model raises ``EngineClosedError``."""

    def __init__(self, model: Model, n_ctx: int, lock: threading.Lock) -> None:
        self._model = model
        self._n_ctx = n_ctx
        self._lock = lock
        self.chat_template = model.meta("tokenizer.chat_template")
        self._bos_text = model.bos_text()
        self._eos_text = model.eos_text()

    def _open(self) -> Model:
        if self._model.ptr is None:
            raise EngineClosedError("the model is unloaded")
        return self._model

    def check_length(self, chars: int) -> None:
        """Refuse, before tokenising, text that cannot fit the context whatever its tokens."""
        if chars > max(self._n_ctx, EMBED_CTX) * MAX_CHARS_PER_TOKEN:
            raise PromptTooLongError(chars, self._n_ctx)

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        self.check_length(len(text))
        with self._lock:  # the model must outlive the call
            return self._open().tokenize(text, add_special=True, parse_special=special)

    def chat_ids(self, messages: Sequence[dict[str, Any]],
                 tools: Sequence[dict[str, Any]] | None, marker: str | None) -> list[int]:
        """Template pieces tokenised: control text parsed for special tokens, content
        never; with ``marker``, each one in content becomes ``IMAGE_TOKEN``."""
        pieces = render_chat_segments(messages, self.chat_template, tools=tools,
                                      bos_token=self._bos_text, eos_token=self._eos_text)
        self.check_length(sum(len(text) for text, _ in pieces))
        return self._piece_ids(pieces, marker)

    def _piece_ids(self, pieces: Sequence[tuple[str, bool]], marker: str | None
                   ) -> list[int]:
        """The pieces' token ids."""
        ids: list[int] = []
        with self._lock:
            model = self._open()
            for i, (text, is_content) in enumerate(pieces):
                parts = text.split(marker) if marker and is_content else [text]
                for j, part in enumerate(parts):
                    if j:
                        ids.append(IMAGE_TOKEN)
                    if part or (i == 0 and j == 0):  # the first call adds BOS if wanted
                        ids += model.tokenize(part, add_special=i == 0 and j == 0,
                                              parse_special=not is_content)
        return ids

    def render(self, messages: Sequence[dict[str, Any]],
               tools: Sequence[dict[str, Any]] | None = None) -> str:
        return render_chat(messages, self.chat_template, bos_token=self._bos_text,
                           eos_token=self._eos_text, tools=tools)

    def json_schema_grammar(self, schema: dict) -> str:
        from llama_cpp.llama_grammar import json_schema_to_gbnf

        check_schema(schema)
        try:
            grammar = json_schema_to_gbnf(json.dumps(schema))
        except RecursionError as exc:
            raise InvalidRequestError("the JSON schema is too deeply recursive") from exc
        except Exception as exc:  # the converter raises plain Exceptions of many kinds
            raise InvalidRequestError(f"unsupported JSON schema: {str(exc)[:300]}") from exc
        grammar = json_string_chars(grammar)
        check_grammar(grammar)
        with self._lock:  # the converter can emit GBNF llama.cpp refuses (a quote in a
            model = self._open()  # property name): refuse it here, not at submit
            try:
                Sampler(model, temperature=0, top_p=1, seed=None, grammar=grammar).close()
            except InvalidRequestError as exc:
                raise InvalidRequestError("unsupported JSON schema: it becomes a grammar "
                                          "llama.cpp cannot parse") from exc
        return grammar


class PromptMethods:
    """The prompt half of the ``LLMEngine`` contract, answered by the engine's
    ``_prompts`` (a ``PromptBuilder``) and ``_info``; engines list it before ``LLMEngine``."""

    _prompts: PromptBuilder
    _info: LLMInfo

    @property
    def info(self) -> LLMInfo:
        return self._info

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        return self._prompts.tokenize(text, special)

    def chat_tokens(self, messages: Sequence[dict[str, Any]],
                    tools: Sequence[dict[str, Any]] | None = None) -> list[int]:
        return self._prompts.chat_ids(messages, tools, None)

    def render_chat(self, messages: Sequence[dict[str, Any]],
                    tools: Sequence[dict[str, Any]] | None = None) -> str:
        return self._prompts.render(messages, tools)

    def json_schema_grammar(self, schema: dict) -> str:
        return self._prompts.json_schema_grammar(schema)

"""Several choices in one answer (``n``, lists of prompts), with logprobs and echo (pure).

One engine generation per choice; choice ``i`` of prompt ``p`` is index ``p * n + i``
(prompt-major, as OpenAI numbers them). The shapes below take the events of all those
generations, interleaved as they arrive, and give the chunks of a streamed answer or the
whole answer at the end. Usage counts each prompt once (its ``n`` choices share it: the
engine forks them from one read) and every choice's completion.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from appliance.api.logprob_shapes import LegacyLogprobs, chat_logprobs, merge_legacy
from appliance.api.tool_answers import DeltaStream, finish_reason, message
from engines.types import Finished, GenerationEvent, PromptTokens, TextDelta, TokenLogprob


@dataclass
class _Choice:
    text: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    legacy: list[dict[str, Any]] = field(default_factory=list)
    shaper: LegacyLogprobs = field(default_factory=LegacyLogprobs)
    finish: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    started: bool = False  # stream: the echo / role chunk was sent
    held: list[GenerationEvent] = field(default_factory=list)  # waiting for the echo
    calls: DeltaStream | None = None  # reads tool calls out of a chat choice's text


class _Choices:
    """What both shapes share: per-choice state, usage, the response head."""

    object_name = ""
    prefix = ""

    def __init__(self, model: str, n_prompts: int, n: int, logprobs: bool) -> None:
        self.model, self.n, self.logprobs = model, n, logprobs
        self.choices = [_Choice() for _ in range(n_prompts * n)]
        self.ident = f"{self.prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def head(self, kind: str | None = None) -> dict[str, Any]:
        return {"id": self.ident, "object": kind or self.object_name, "created": self.created,
                "model": self.model, "system_fingerprint": None}

    def see(self, i: int, event: GenerationEvent) -> None:
        """Account ``event`` of choice ``i`` (text, logprobs, the end)."""
        c = self.choices[i]
        if isinstance(event, TextDelta) and event.text:
            c.text.append(event.text)
            if self.logprobs:
                c.logprobs.extend(event.logprobs)
        elif isinstance(event, Finished):
            c.finish = event.finish_reason
            c.prompt_tokens = event.prompt_tokens
            c.completion_tokens = event.completion_tokens
            c.cached_tokens = event.cached_tokens

    def usage(self) -> dict[str, Any]:
        """Each prompt once (with the fewest cached tokens among its choices: the one
        that read it), every choice's completion."""
        prompt = cached = 0
        for p in range(0, len(self.choices), self.n):
            group = self.choices[p:p + self.n]
            prompt += max(c.prompt_tokens for c in group)
            cached += min(c.cached_tokens for c in group)
        completion = sum(c.completion_tokens for c in self.choices)
        return {"prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": cached}}

    def finish_reasons(self) -> list[str | None]:
        return [c.finish for c in self.choices]


class ChatChoices(_Choices):
    """``chat.completion`` and its chunks for ``n`` choices of one conversation; with
    ``calls`` (a reader per choice), tool calls in a choice's text become ``tool_calls``
    (see appliance.api.tool_answers)."""

    object_name = "chat.completion"
    prefix = "chatcmpl"

    def __init__(self, model: str, n: int, logprobs: bool,
                 calls: Callable[[], DeltaStream] | None = None) -> None:
        super().__init__(model, 1, n, logprobs)
        if calls is not None:
            for c in self.choices:
                c.calls = calls()

    def chunk(self, i: int, delta: dict[str, Any], finish: str | None = None,
              logprobs: Sequence[TokenLogprob] = ()) -> dict[str, Any]:
        lp = chat_logprobs(logprobs) if self.logprobs and logprobs else None
        return self.head("chat.completion.chunk") | {"choices": [
            {"index": i, "delta": delta, "logprobs": lp, "finish_reason": finish}]}

    def feed(self, i: int, event: GenerationEvent) -> list[dict[str, Any]]:
        """The chunks ``event`` of choice ``i`` makes (a role chunk opens each choice)."""
        self.see(i, event)
        c, out = self.choices[i], []
        if not c.started:
            c.started = True
            forced = c.calls is not None and c.calls.forced  # a call, no text: as OpenAI
            out.append(self.chunk(i, {"role": "assistant", "content": None if forced else ""}))
        if isinstance(event, TextDelta) and event.text:
            if c.calls is None:
                out.append(self.chunk(i, {"content": event.text}, logprobs=event.logprobs))
            else:  # text held back while a call may be starting still has its logprobs
                deltas = c.calls.feed(event.text) or [{}]
                out.append(self.chunk(i, deltas[0], logprobs=event.logprobs))
                out += [self.chunk(i, d) for d in deltas[1:]]
        elif isinstance(event, Finished):
            if c.calls is not None:
                out += [self.chunk(i, d) for d in c.calls.close()]
            out.append(self.chunk(i, {}, self._finish(c)))
        return out

    @staticmethod
    def _finish(c: _Choice) -> str | None:
        if c.calls is None or c.finish is None:
            return c.finish
        return finish_reason(c.finish, c.calls.called)

    def usage_chunk(self) -> dict[str, Any]:
        return self.head("chat.completion.chunk") | {"choices": [], "usage": self.usage()}

    def answer(self) -> dict[str, Any]:
        """The whole answer, once every choice was fed (``feed`` reads the tool calls)."""
        return self.head() | {"choices": [
            {"index": i, "message": ({"role": "assistant", "content": "".join(c.text)}
                                     if c.calls is None else message(c.calls.answer())),
             "logprobs": chat_logprobs(c.logprobs) if self.logprobs else None,
             "finish_reason": self._finish(c)} for i, c in enumerate(self.choices)],
            "usage": self.usage()}


class CompletionChoices(_Choices):
    """``text_completion`` and its chunks: ``n`` choices for each prompt, with ``echo``
    (the prompt's text first) and legacy ``logprobs``.

    With echo only the first choice of each prompt asks the engine for the prompt's
    tokens (``PromptTokens``); every choice of that prompt echoes them. A streamed choice
    that starts before them waits (its events are held) until they arrive."""

    object_name = "text_completion"
    prefix = "cmpl"

    def __init__(self, model: str, prompts: Sequence[str | None], n: int, echo: bool,
                 logprobs: bool) -> None:
        super().__init__(model, len(prompts), n, logprobs)
        self.texts = list(prompts)  # a prompt's own text (None: token ids, echo the pieces)
        self.echo = echo
        self.echoes: dict[int, tuple[TokenLogprob, ...]] = {}  # prompt -> its tokens

    def chunk(self, i: int, text: str, finish: str | None = None,
              logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.head() | {"choices": [{"index": i, "text": text, "logprobs": logprobs,
                                           "finish_reason": finish}]}

    def _echo_text(self, p: int) -> str:
        given = self.texts[p]
        if given is not None:
            return given
        return b"".join(t.piece for t in self.echoes.get(p, ())).decode("utf-8", errors="replace")

    def feed(self, i: int, event: GenerationEvent) -> list[dict[str, Any]]:
        """The chunks ``event`` of choice ``i`` makes, in order."""
        p = i // self.n
        if isinstance(event, PromptTokens):
            self.echoes[p] = event.tokens
            out = []
            for j in range(p * self.n, (p + 1) * self.n):
                held, self.choices[j].held = self.choices[j].held, []
                for e in held:
                    out += self.feed(j, e)
            return out
        c = self.choices[i]
        if self.echo and p not in self.echoes:
            c.held.append(event)
            return []
        out = []
        if not c.started:
            c.started = True
            if self.echo:
                lp = self._legacy(c, self.echoes[p]) if self.logprobs else None
                out.append(self.chunk(i, self._echo_text(p), logprobs=lp))
        self.see(i, event)
        if isinstance(event, TextDelta) and event.text:
            lp = self._legacy(c, event.logprobs) if self.logprobs else None
            out.append(self.chunk(i, event.text, logprobs=lp))
        elif isinstance(event, Finished):
            out.append(self.chunk(i, "", c.finish))
        return out

    def _legacy(self, c: _Choice, entries: Sequence[TokenLogprob]) -> dict[str, Any]:
        shaped = c.shaper.shape(entries)
        c.legacy.append(shaped)
        return shaped

    def usage_chunk(self) -> dict[str, Any]:
        return self.head() | {"choices": [], "usage": self.usage()}

    def answer(self) -> dict[str, Any]:
        """The whole answer, once every choice was fed (``feed`` builds the logprobs)."""
        choices = []
        for i, c in enumerate(self.choices):
            text = "".join(c.text)
            if self.echo:
                text = self._echo_text(i // self.n) + text
            choices.append({"index": i, "text": text,
                            "logprobs": merge_legacy(c.legacy) if self.logprobs else None,
                            "finish_reason": c.finish})
        return self.head() | {"choices": choices, "usage": self.usage()}

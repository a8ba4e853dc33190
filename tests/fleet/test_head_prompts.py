"""A fleet head prepares prompts on its own prompt worker (no Ray cluster: the Serve
handle is a recorder), and only asks a replica when it has none."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engines.llm.vocab import VocabLlamaEngine
from engines.types import LLMInfo
from fleet.engine import FleetLLMEngine

CHAT = [{"role": "user", "content": "Where is my parcel?"}]
INFO = LLMInfo(n_ctx=512, n_ctx_train=2048, n_embd=576, backend="cpu", n_gpu_layers=0,
               slots=4, chat_template=None)


class _Reply:
    def __init__(self, value: Any) -> None:
        self.value = value

    def result(self, timeout_s: float | None = None) -> Any:
        return self.value


class _Method:
    def __init__(self, handle: _Handle, name: str) -> None:
        self.handle, self.name = handle, name

    def remote(self, *args: Any, **kwargs: Any) -> _Reply:
        self.handle.calls.append(self.name)
        return _Reply(INFO if self.name == "info" else [7, 7, 7])


class _Handle:
    """What a Serve deployment handle is to ``FleetLLMEngine``: methods with ``remote``."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def options(self, **_: Any) -> _Handle:
        return self

    def __getattr__(self, name: str) -> _Method:
        return _Method(self, name)


def test_the_head_tokenises_on_its_prompt_worker(gguf_path: Path) -> None:
    prompts = VocabLlamaEngine(gguf_path, n_ctx=512)
    handle = _Handle()
    engine = FleetLLMEngine("m", handle, prompts=prompts)  # type: ignore[arg-type]
    expected = prompts.chat_tokens(CHAT)
    assert engine.chat_tokens(CHAT) == expected and len(expected) > 3
    assert engine.tokenize("hello") == prompts.tokenize("hello")
    assert engine.render_chat(CHAT) == prompts.render_chat(CHAT)
    assert handle.calls == ["info"]  # no replica was asked to tokenise
    engine.close()
    assert prompts._model.ptr is None  # closed with the engine


def test_without_a_prompt_worker_a_replica_tokenises() -> None:
    handle = _Handle()
    engine = FleetLLMEngine("m", handle)  # type: ignore[arg-type]
    assert engine.chat_tokens(CHAT) == [7, 7, 7]
    assert handle.calls == ["info", "chat_tokens"]

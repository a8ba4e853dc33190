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
        self.cancelled = False

    def result(self, timeout_s: float | None = None) -> Any:
        if isinstance(self.value, Exception):
            raise self.value
        return self.value

    def cancel(self) -> None:
        self.cancelled = True


class _Method:
    def __init__(self, handle: _Handle, name: str) -> None:
        self.handle, self.name = handle, name

    def remote(self, *args: Any, **kwargs: Any) -> _Reply:
        self.handle.calls.append(self.name)
        if self.handle.grpc and self.name == "placement":
            reply = _Reply(self.handle.grpc_answer)
            self.handle.probes.append(reply)
            return reply
        return _Reply(INFO if self.name == "info" else [7, 7, 7])


class _Handle:
    """What a Serve deployment handle is to ``FleetLLMEngine``: methods with ``remote``;
    ``grpc_answer`` is what a call over Serve's gRPC channel gets."""

    def __init__(self, grpc_answer: Any = None, grpc: bool = False,
                 probes: list[_Reply] | None = None) -> None:
        self.calls: list[str] = []
        self.grpc, self.grpc_answer = grpc, grpc_answer
        self.probes: list[_Reply] = [] if probes is None else probes

    def options(self, **kwargs: Any) -> _Handle:
        if kwargs.get("_by_reference") is False:
            grpc = _Handle(self.grpc_answer, grpc=True, probes=self.probes)
            grpc.calls = self.calls
            return grpc
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
    assert handle.calls == ["info", "placement"]  # no replica was asked to tokenise
    engine.close()
    assert prompts._model.ptr is None  # closed with the engine


def test_without_a_prompt_worker_a_replica_tokenises() -> None:
    handle = _Handle()
    engine = FleetLLMEngine("m", handle)  # type: ignore[arg-type]
    assert engine.chat_tokens(CHAT) == [7, 7, 7]
    assert handle.calls == ["info", "placement", "chat_tokens"]


def test_tokens_stream_over_grpc_when_a_replica_answers_there() -> None:
    engine = FleetLLMEngine("m", _Handle())  # type: ignore[arg-type]
    assert engine._stream_grpc is True


def test_a_replica_unreachable_over_grpc_streams_as_ray_objects(caplog) -> None:
    """A firewall that blocks the replicas' gRPC port would leave every stream retrying
    inside Serve; the head finds out at load and keeps tokens on Ray's worker ports."""
    handle = _Handle(grpc_answer=TimeoutError("no answer in 15 s"))
    engine = FleetLLMEngine("m", handle)  # type: ignore[arg-type]
    assert engine._stream_grpc is False
    assert handle.probes and handle.probes[0].cancelled  # not left retrying in Serve
    assert "fleet_stream_grpc" in caplog.text


def test_no_probe_when_grpc_is_off() -> None:
    handle = _Handle()
    FleetLLMEngine("m", handle, stream_grpc=False)  # type: ignore[arg-type]
    assert handle.calls == ["info"]

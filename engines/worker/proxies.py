"""The engine contracts over a supervised worker: what the registry holds for each model.

``WorkerLLMEngine`` is an ``LLMEngine`` and ``WorkerVisionEngine`` a ``VisionEngine``; the
same contract tests run against them as against the in-process engines. Every call goes
to the worker; while the worker restarts, calls raise EngineCrashedError (503 with
Retry-After), and generations in flight when it died end with ``Failed`` of that error.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from engines.base import EventSink, GenerationHandle, LLMEngine
from engines.types import GenerationRequest, LLMInfo
from engines.vision.base import ImageInput, VisionEngine
from engines.vision.types import Detections, OcrResult
from engines.worker.supervisor import Supervisor

log = logging.getLogger(__name__)

STATS_TIMEOUT_S = 2.0
PREPARE_TIMEOUT_S = 60.0  # tokenising or compiling a grammar: bounded, never a hang


def _tools(tools: Sequence[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    return None if tools is None else [dict(t) for t in tools]


class _WorkerBacked:
    """What both proxies share: the supervisor, its status and the worker's memory."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        supervisor.start()
        self._stats: dict[str, float] = dict(supervisor.payload.get("stats", {}))

    def worker_status(self) -> dict[str, Any]:
        """Process facts for /admin/models and doctor."""
        sup = self.supervisor
        return {"worker_pid": sup.pid, "worker_config": sup.config.name,
                "worker_restarts": sup.restarts, "worker_last_exit": sup.last_exit,
                "fallback": sup.fallback}

    @property
    def memory_bytes(self) -> int:
        """Resident memory of the worker process (weights, KV cache, sessions)."""
        pid = self.supervisor.pid
        if pid is None:
            return 0
        try:
            import psutil

            return int(psutil.Process(pid).memory_info().rss)
        except Exception:  # gone between the two lines
            return 0

    def _call(self, method: str, *args: Any, timeout: float | None = None, **kwargs: Any
              ) -> Any:
        return self.supervisor.current().call(method, *args, timeout=timeout, **kwargs)

    def stats(self) -> dict[str, float]:
        """Live gauges from the worker; the last known ones while it restarts, and inside
        an event sink (the gauges the worker sent with the request's last event)."""
        try:
            proc = self.supervisor.current()
            if proc.on_reader_thread:
                self._stats = dict(proc.last_stats)
            else:
                self._stats = proc.call("stats", timeout=STATS_TIMEOUT_S)
        except Exception as exc:
            log.debug("stats of %s unavailable: %s", self.supervisor.spec.name, exc)
        return {**self._stats, "worker_restarts": float(self.supervisor.restarts)}

    def close(self) -> None:
        self.supervisor.close()


class WorkerLLMEngine(_WorkerBacked, LLMEngine):
    """An LLM whose llama.cpp, model and scheduler live in a worker process."""

    @property
    def info(self) -> LLMInfo:
        return self.supervisor.payload["info"]

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        return self._call("tokenize", text, special=special, timeout=PREPARE_TIMEOUT_S)

    def render_chat(self, messages: Sequence[dict[str, Any]],
                    tools: Sequence[dict[str, Any]] | None = None) -> str:
        return self._call("render_chat", [dict(m) for m in messages], _tools(tools),
                          timeout=PREPARE_TIMEOUT_S)

    def chat_tokens(self, messages: Sequence[dict[str, Any]],
                    tools: Sequence[dict[str, Any]] | None = None) -> list[int]:
        return self._call("chat_tokens", [dict(m) for m in messages], _tools(tools),
                          timeout=PREPARE_TIMEOUT_S)

    def vision_chat_tokens(self, messages: Sequence[dict[str, Any]],
                           tools: Sequence[dict[str, Any]] | None, marker: str) -> list[int]:
        return self._call("vision_chat_tokens", [dict(m) for m in messages], _tools(tools),
                          marker, timeout=PREPARE_TIMEOUT_S)

    def json_schema_grammar(self, schema: dict) -> str:
        return self._call("json_schema_grammar", schema, timeout=PREPARE_TIMEOUT_S)

    def submit(self, request: GenerationRequest, sink: EventSink) -> GenerationHandle:
        return self.supervisor.current().submit(request, sink)

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return self._call("embed", list(texts))

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return self._call("count_tokens", list(texts), timeout=PREPARE_TIMEOUT_S)

    def waiting(self) -> dict[str, int]:
        return self._call("waiting", timeout=STATS_TIMEOUT_S)


class WorkerVisionEngine(_WorkerBacked, VisionEngine):
    """A vision model whose ONNX Runtime sessions live in a worker process."""

    def __init__(self, supervisor: Supervisor) -> None:
        VisionEngine.__init__(self, supervisor.spec.name)
        _WorkerBacked.__init__(self, supervisor)
        self.kind = str(supervisor.payload.get("kind", "vision"))

    def ocr(self, image: ImageInput) -> OcrResult:
        return self._call("ocr", image)

    def detect(self, image: ImageInput, conf: float = 0.25, iou: float = 0.45) -> Detections:
        return self._call("detect", image, conf, iou)

    @property
    def provider(self) -> str:
        return str(self.supervisor.payload.get("provider", "unknown"))

    @property
    def provider_report(self) -> tuple[str, ...]:
        return tuple(self.supervisor.payload.get("provider_report", ()))

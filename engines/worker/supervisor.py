"""Owns the worker process of one model: picks a configuration it can trust, restarts the
worker with back-off when it dies, and reports what happened.

Trust: the first time a model runs on a box (per CPU, native library version, model files
and release; see ``EngineSpec.trust_key``) its worker self-tests with a short real decode
before it takes requests. A worker killed by a signal while loading or self-testing is
started again in the next, safer configuration; the choice and the reason are remembered
in a ``TrustBook`` so later loads skip straight to it. A worker that exits with a status
(not a signal) failed for a reason a safer configuration will not fix: that is a load error.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from engines.errors import EngineClosedError, EngineCrashedError, EngineError, ModelLoadError
from engines.worker.process import WorkerDied, WorkerProcess
from engines.worker.spec import Config, EngineSpec

log = logging.getLogger(__name__)

EventHook = Callable[[str, dict[str, Any]], None]


class TrustBook(Protocol):
    """Where the box remembers which configuration passed its self-test."""

    def recall(self, key: str) -> dict[str, Any] | None: ...

    def remember(self, key: str, record: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class Backoff:
    """Delay before restart n: ``first * factor**n`` up to ``cap``; reset after a good run."""

    first: float = 0.25
    factor: float = 2.0
    cap: float = 30.0
    reset_after: float = 60.0

    def delay(self, attempt: int) -> float:
        return min(self.cap, self.first * self.factor ** attempt)


class Supervisor:
    """The live worker of one engine spec. ``start`` blocks until it serves (or fails)."""

    def __init__(self, spec: EngineSpec, *, trust: TrustBook | None = None,
                 on_event: EventHook | None = None, env: dict[str, str] | None = None,
                 ready_timeout: float = 900.0, backoff: Backoff | None = None,
                 log_level: int = logging.INFO) -> None:
        self.spec = spec
        self._trust = trust
        self._on_event = on_event
        self._env = env
        self._ready_timeout = ready_timeout
        self._backoff = backoff or Backoff()
        self._log_level = log_level
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._proc: WorkerProcess | None = None
        self._restarter: threading.Thread | None = None
        self._attempt = 0
        self._up_since = 0.0
        self.config: Config = spec.configs[0]
        self.fallback: str | None = None
        self.restarts = 0
        self.last_exit: str | None = None
        self.payload: dict[str, Any] = {}

    # ------------------------------------------------------------------ start

    def start(self) -> None:
        key = self.spec.trust_key()
        record = self._trust.recall(key) if self._trust else None
        names = [c.name for c in self.spec.configs]
        if record and record.get("config") in names:
            index = names.index(record["config"])
            self.fallback = record.get("fallback")
            try:
                self._adopt(self._spawn(index, selftest=False))
                return
            except WorkerDied as exc:
                if exc.signal_number is None:
                    raise ModelLoadError(str(exc)) from exc
                log.error("%s; the remembered configuration is self-tested again", exc)
        self._self_test_chain(key)

    def _self_test_chain(self, key: str) -> None:
        crashes: list[str] = []
        for index, config in enumerate(self.spec.configs):
            try:
                proc = self._spawn(index, selftest=True)
            except WorkerDied as exc:
                if exc.signal_number is None:
                    raise ModelLoadError(str(exc)) from exc
                crashes.append(f"{config.name}: {exc}")
                log.error("self-test of %s crashed in configuration %r: %s",
                          self.spec.name, config.name, exc)
                continue
            except EngineError:
                if index == 0:
                    raise
                continue  # a fallback that does not apply here (e.g. no such provider)
            self.fallback = None
            if crashes:
                self.fallback = (f"running in configuration {config.name!r} because the "
                                 f"self-test crashed in {'; '.join(crashes)}"
                                 + (f"; {config.why}" if config.why else ""))
                log.warning("model %s: %s", self.spec.name, self.fallback)
                self._emit("fallback", config=config.name, reason=self.fallback)
            if self._trust is not None:
                self._trust.remember(key, {
                    "model": self.spec.name, "config": config.name, "fallback": self.fallback,
                    "at": time.time()})
            self._adopt(proc)
            return
        raise ModelLoadError(f"model {self.spec.name} crashed its worker in every "
                             f"configuration: {'; '.join(crashes)}")

    def _spawn(self, index: int, *, selftest: bool) -> WorkerProcess:
        config = self.spec.configs[index]
        proc = WorkerProcess(self.spec, config, selftest=selftest, fallback=index > 0,
                             on_exit=self._exited, env=self._env, log_level=self._log_level)
        try:
            self.payload = proc.wait_ready(self._ready_timeout)
        except BaseException:
            proc.close(timeout=5)
            raise
        self.config = config
        return proc

    def _adopt(self, proc: WorkerProcess) -> None:
        with self._lock:
            if self._closed.is_set():
                proc.close()
                raise EngineCrashedError("the model was unloaded while its worker started")
            self._proc = proc
            self._up_since = time.monotonic()

    # ------------------------------------------------------------------ serving

    def current(self) -> WorkerProcess:
        """The ready worker; EngineCrashedError while it is being restarted."""
        proc = self._proc
        if proc is None or proc.dead:
            if self._closed.is_set():
                raise EngineClosedError("the model is unloaded")
            raise EngineCrashedError(
                f"the engine worker of {self.spec.name} {self.last_exit or 'is starting'}; "
                "it is being restarted", retry_after=self.retry_after())
        return proc

    def retry_after(self) -> float:
        return max(1.0, self._backoff.delay(self._attempt) + 1.0)

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and not proc.dead else None

    def _exited(self, proc: WorkerProcess, reason: str) -> None:
        with self._lock:
            if self._closed.is_set() or proc is not self._proc:
                return
            self.restarts += 1
            self.last_exit = reason
            if time.monotonic() - self._up_since > self._backoff.reset_after:
                self._attempt = 0
            self._restarter = threading.Thread(target=self._restart, daemon=True,
                                               name=f"worker-restart-{self.spec.name}")
            self._restarter.start()
        self._emit("crash", pid=proc.pid, reason=reason)

    def _restart(self) -> None:
        while not self._closed.is_set():
            delay = self._backoff.delay(self._attempt)
            self._attempt += 1
            if self._closed.wait(delay):
                return
            index = [c.name for c in self.spec.configs].index(self.config.name)
            try:
                proc = self._spawn(index, selftest=False)
            except Exception as exc:
                log.error("restart of the %s worker failed: %s", self.spec.name, exc)
                continue
            try:
                self._adopt(proc)
            except EngineCrashedError:
                return
            log.warning("engine worker of %s restarted as pid %d (restart %d)",
                        self.spec.name, proc.pid, self.restarts)
            self._emit("restart", pid=proc.pid, restarts=self.restarts, after=self.last_exit)
            return

    def _emit(self, kind: str, **details: Any) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(kind, {"model": self.spec.name, "config": self.config.name,
                                  **details})
        except Exception:
            log.exception("engine event hook failed for %s", kind)

    # ------------------------------------------------------------------ end

    def close(self) -> None:
        """Stop restarting and end the worker; its memory returns to the OS."""
        with self._lock:
            self._closed.set()
            proc, self._proc = self._proc, None
            restarter = self._restarter
        if restarter is not None and restarter is not threading.current_thread():
            restarter.join()
        if proc is not None:
            proc.close()

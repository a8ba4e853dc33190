"""One worker process seen from the box: spawn it, call it, stream its events, see it die.

A reader thread receives everything the worker sends. Event sinks are called from that
thread, in order. When the worker dies (a signal, an exit, a broken pipe), every
generation in flight ends with ``Failed(EngineCrashedError)``, every pending call raises
it, and ``on_exit`` is told once (unless the box itself closed the worker).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from multiprocessing.connection import Connection
from typing import Any

from engines.base import EventSink, GenerationHandle
from engines.errors import (
    EngineClosedError,
    EngineCrashedError,
    EngineError,
    OverloadedError,
)
from engines.types import Failed, Finished, GenerationRequest
from engines.worker.serve import FD_ENV
from engines.worker.spec import Config, EngineSpec

log = logging.getLogger(__name__)

CLOSE_WAIT_S = 15.0


class WorkerDied(EngineError):
    """The worker process ended before it was ready (``signal`` set when a signal killed it)."""

    def __init__(self, message: str, signal_number: int | None) -> None:
        self.signal_number = signal_number
        super().__init__(message)


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "lost its pipe"
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


class _Handle(GenerationHandle):
    def __init__(self, worker: WorkerProcess, rid: int) -> None:
        self._worker, self._rid = worker, rid

    def cancel(self) -> None:
        self._worker.cancel(self._rid)


class WorkerProcess:
    """A started worker. ``wait_ready`` before use; every other method is thread-safe."""

    def __init__(self, spec: EngineSpec, config: Config, *, selftest: bool, fallback: bool,
                 on_exit: Callable[[WorkerProcess, str], None] | None = None,
                 env: dict[str, str] | None = None, log_level: int = logging.INFO) -> None:
        self.spec, self.config = spec, config
        self._on_exit = on_exit
        self._send_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._sinks: dict[int, EventSink] = {}
        self._calls: dict[int, Future] = {}
        self._ids = itertools.count(1)
        self._ready: Future = Future()
        self._closing = False
        self.dead = False
        self.exit_reason = ""
        self.payload: dict[str, Any] = {}
        self.last_stats: dict[str, float] = {}
        parent, child = socket.socketpair()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "engines.worker"], pass_fds=[child.fileno()],
                env={**os.environ, **(env or {}), FD_ENV: str(child.fileno())},
                stdin=subprocess.DEVNULL)
        finally:
            child.close()
        self.conn = Connection(parent.detach())
        self._send(("hello", {"spec": spec, "config": config, "selftest": selftest,
                              "fallback": fallback, "log_level": log_level}))
        self._reader = threading.Thread(target=self._read, daemon=True,
                                        name=f"worker-reader-{spec.name}")
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def on_reader_thread(self) -> bool:
        """True inside an event sink (which runs on the reader thread)."""
        return threading.current_thread() is self._reader

    # --------------------------------------------------------------- requests

    def wait_ready(self, timeout: float | None = None) -> dict[str, Any]:
        """The worker's ready payload; raises WorkerDied, its load error, or TimeoutError."""
        try:
            return self._ready.result(timeout)
        except FutureTimeout:
            raise TimeoutError(f"worker of {self.spec.name} not ready in {timeout}s") from None

    def submit(self, request: GenerationRequest, sink: EventSink) -> GenerationHandle:
        rid = next(self._ids)
        with self._state_lock:
            if self.dead:
                raise EngineCrashedError(self._gone())
            self._sinks[rid] = sink
        self._send(("submit", rid, request))
        return _Handle(self, rid)

    def cancel(self, rid: int) -> None:
        with self._state_lock:
            if self.dead or rid not in self._sinks:
                return
        self._send(("cancel", rid))

    def call(self, method: str, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        """Call ``method`` on the engine in the worker and wait for its result."""
        cid = next(self._ids)
        fut: Future = Future()
        with self._state_lock:
            if self.dead:
                raise EngineCrashedError(self._gone())
            self._calls[cid] = fut
        self._send(("call", cid, method, args, kwargs))
        try:
            return fut.result(timeout)
        except FutureTimeout:
            with self._state_lock:
                self._calls.pop(cid, None)
            raise OverloadedError(f"the engine worker of {self.spec.name} did not answer "
                                  f"{method} within {timeout:g}s", retry_after=5) from None

    def close(self, timeout: float = CLOSE_WAIT_S) -> None:
        """Ask the worker to stop, then kill it if it does not; memory goes back to the OS."""
        with self._state_lock:
            self._closing = True
        if self.proc.poll() is None:
            with contextlib.suppress(EngineError):
                self._send(("close",))
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("worker %d of %s did not stop; killing it", self.pid, self.spec.name)
                self.proc.kill()
                self.proc.wait()
        if threading.current_thread() is not self._reader:  # closed from inside a sink
            self._reader.join(timeout)
        self._fail_all(EngineClosedError("the model was unloaded before the request finished"))

    # --------------------------------------------------------------- plumbing

    def _send(self, msg: tuple) -> None:
        data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            with self._send_lock:
                self.conn.send_bytes(data)
        except OSError as exc:
            raise EngineCrashedError(self._gone() or f"worker pipe broken: {exc}") from None

    def _gone(self) -> str:
        return (f"the engine worker of {self.spec.name} {self.exit_reason or 'is gone'}; "
                "it is being restarted")

    def _read(self) -> None:
        try:
            while True:
                msg = self.conn.recv()
                op = msg[0]
                if op == "ev":
                    if len(msg) > 3:
                        self.last_stats = msg[3]
                    self._event(msg[1], msg[2])
                elif op == "ret" or op == "err":
                    with self._state_lock:
                        fut = self._calls.pop(msg[1], None)
                    if fut is not None:
                        (fut.set_result if op == "ret" else fut.set_exception)(msg[2])
                elif op == "ready":
                    self.payload = msg[1]
                    self.last_stats = msg[1].get("stats", {})
                    self._ready.set_result(msg[1])
                elif op == "load_error":
                    self._ready.set_exception(msg[1])
        except (EOFError, OSError):
            pass
        except Exception:
            log.exception("worker %d of %s sent something unreadable", self.pid, self.spec.name)
            self.proc.kill()
        self._died()

    def _event(self, rid: int, event: Any) -> None:
        final = isinstance(event, Finished | Failed)
        with self._state_lock:
            sink = self._sinks.pop(rid, None) if final else self._sinks.get(rid)
        if sink is None:
            return
        try:
            sink(event)
        except Exception:  # the client is gone: stop generating for it
            log.exception("event sink of request %d raised; cancelling it", rid)
            if not final:
                with self._state_lock:
                    self._sinks.pop(rid, None)
                self._send_quiet(("cancel", rid))

    def _send_quiet(self, msg: tuple) -> None:
        with contextlib.suppress(EngineError):
            self._send(msg)

    def _died(self) -> None:
        try:
            returncode = self.proc.wait(CLOSE_WAIT_S)
        except subprocess.TimeoutExpired:  # pipe broken but alive: make it a real death
            self.proc.kill()
            returncode = self.proc.wait()
        self.exit_reason = describe_exit(returncode)
        with self._state_lock:
            self.dead = True
            closing = self._closing
        signum = -returncode if returncode is not None and returncode < 0 else None
        if not self._ready.done():
            self._ready.set_exception(WorkerDied(
                f"the engine worker of {self.spec.name} {self.exit_reason} while loading "
                f"in configuration {self.config.name!r}", signum))
        if closing:
            return
        log.error("engine worker %d of %s %s", self.pid, self.spec.name, self.exit_reason)
        self._fail_all(EngineCrashedError(self._gone()))
        if self._on_exit is not None and self._ready.exception() is None:
            self._on_exit(self, self.exit_reason)

    def _fail_all(self, error: EngineError) -> None:
        with self._state_lock:
            sinks, self._sinks = self._sinks, {}
            calls, self._calls = self._calls, {}
        for sink in sinks.values():
            try:
                sink(Failed(error))
            except Exception:
                log.exception("event sink raised while failing a request")
        for fut in calls.values():
            if not fut.done():
                fut.set_exception(error)

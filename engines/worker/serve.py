"""The worker's side: build one engine, self-test it if asked, then serve the box.

Messages (tuples, pickled over a socket pair):

- box -> worker: ``("submit", rid, GenerationRequest)``, ``("cancel", rid)``,
  ``("call", cid, method, args, kwargs)``, ``("close",)``.
- worker -> box: ``("ready", payload)`` or ``("load_error", exc)`` once, then
  ``("ev", rid, event)`` (ending with ``Finished`` or ``Failed``, which carry the engine's
  stats as a fourth item), ``("ret", cid, value)``
  and ``("err", cid, exc)``.

A worker exits when the box closes it or its end of the socket goes away (the box died).
(No PR_SET_PDEATHSIG: it fires when the *thread* that started the worker ends, and the
box restarts workers from short-lived threads.)
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import signal
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from engines.errors import EngineError, InvalidRequestError
from engines.types import Failed, Finished, GenerationEvent, GenerationRequest, Sampling
from engines.worker.spec import CRASH_SELFTEST_ENV, NICE_ENV, Config, EngineSpec

log = logging.getLogger(__name__)

FD_ENV = "APPLIANCE_WORKER_FD"
#: What the box may call on an engine in a worker (nothing else crosses the pipe).
CALLS = {
    "llm": {"tokenize", "chat_tokens", "vision_chat_tokens", "render_chat",
            "json_schema_grammar", "embed", "count_tokens", "stats", "waiting"},
    "vision": {"ocr", "detect", "stats"},
}
SELFTEST_PROMPT = "The sky is"


def build(spec: EngineSpec, config: Config) -> Any:
    """The engine ``spec`` describes, in ``config``."""
    params = {**spec.params, **config.options}
    if spec.kind == "llm" and params.pop("vocab_only", False):
        from engines.llm.vocab import VocabLlamaEngine

        return VocabLlamaEngine(Path(params["model_path"]), n_ctx=params["n_ctx"])
    if spec.kind == "llm" and params.pop("embedding", False):
        from engines.llm.embedding import LlamaEmbeddingEngine

        return LlamaEmbeddingEngine(Path(params.pop("model_path")), **params)
    if spec.kind == "llm":
        from engines.llm.batched import BatchedLlamaEngine

        return BatchedLlamaEngine(Path(params.pop("model_path")), **params)
    from engines.vision.base import VisionOptions, load_vision_model

    manifest = dict(params["manifest"])
    if "providers" in params:
        manifest["providers"] = params["providers"]
    return load_vision_model(manifest, Path(params["directory"]),
                             VisionOptions(**params.get("options", {})))


def selftest(spec: EngineSpec, engine: Any, crash: bool) -> None:
    """A short real decode (LLMs), one embedding (embedding models); vision engines run an
    inference as they load."""
    if crash:
        log.warning("test switch %s: crashing the self-test", CRASH_SELFTEST_ENV)
        os.kill(os.getpid(), signal.SIGSEGV)
    if spec.kind == "vision":
        return
    if not engine.info.slots:  # a vocabulary only: it tokenises, and that is all
        if not engine.tokenize(SELFTEST_PROMPT):
            raise EngineError("the self-test prompt became no tokens")
        return
    if engine.info.purpose == "embeddings":
        (vector,) = engine.embed([SELFTEST_PROMPT])
        if len(vector) != engine.info.n_embd or not all(math.isfinite(v) for v in vector):
            raise EngineError("the self-test embedding is not a finite vector of the "
                              "model's width")
        return
    done = threading.Event()
    events: list[GenerationEvent] = []

    def sink(event: GenerationEvent) -> None:
        events.append(event)
        if isinstance(event, Finished | Failed):
            done.set()

    tokens = engine.tokenize(SELFTEST_PROMPT)
    engine.submit(GenerationRequest(tuple(tokens), Sampling(max_tokens=4, temperature=0.0)),
                  sink)
    if not done.wait(300):
        raise EngineError("the self-test decode did not finish within 300 s")
    last = events[-1]
    if isinstance(last, Failed):
        raise EngineError(f"the self-test decode failed: {last.error}")


def payload(spec: EngineSpec, engine: Any) -> dict[str, Any]:
    """What the box needs to know about the loaded engine without asking again."""
    out: dict[str, Any] = {"pid": os.getpid()}
    if spec.kind == "vision":
        out.update(kind=engine.kind, provider=engine.provider,
                   provider_report=tuple(engine.provider_report),
                   memory_bytes=int(engine.memory_bytes))
    else:
        out.update(info=engine.info)
    out["stats"] = engine.stats()
    return out


class Server:
    """Serves one engine to the box over ``conn``."""

    def __init__(self, conn: Connection, spec: EngineSpec, engine: Any) -> None:
        self.conn, self.spec, self.engine = conn, spec, engine
        self.allowed = CALLS["vision" if spec.kind == "vision" else "llm"]
        self._send_lock = threading.Lock()
        self._handles: dict[int, Any] = {}
        self._handles_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="worker-call")

    def send(self, msg: tuple) -> None:
        data = _dumps(msg)
        with self._send_lock:
            self.conn.send_bytes(data)

    def run(self) -> None:
        while True:
            try:
                msg = self.conn.recv()
            except (EOFError, OSError):
                log.warning("the box went away; worker exits")
                return
            op = msg[0]
            if op == "submit":
                self._submit(msg[1], msg[2])
            elif op == "cancel":
                with self._handles_lock:
                    handle = self._handles.get(msg[1])
                if handle is not None:
                    handle.cancel()
            elif op == "call":
                self._pool.submit(self._call, msg[1], msg[2], msg[3], msg[4])
            elif op == "close":
                return

    def _submit(self, rid: int, request: GenerationRequest) -> None:
        def sink(event: GenerationEvent) -> None:
            if isinstance(event, Finished | Failed):
                with self._handles_lock:
                    self._handles.pop(rid, None)
                # the gauges as this request ends, for a box that reads them in its sink
                self.send(("ev", rid, event, self.engine.stats()))
            else:
                self.send(("ev", rid, event))

        try:
            handle = self.engine.submit(request, sink)
        except Exception as exc:  # refused at once: the first (and last) event says why
            self.send(("ev", rid, Failed(exc)))
            return
        with self._handles_lock:
            self._handles[rid] = handle

    def _call(self, cid: int, method: str, args: tuple, kwargs: dict[str, Any]) -> None:
        try:
            if method not in self.allowed:
                raise InvalidRequestError(f"worker call {method!r} is not allowed")
            value = getattr(self.engine, method)(*args, **kwargs)
        except Exception as exc:
            self.send(("err", cid, exc))
        else:
            self.send(("ret", cid, value))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.engine.close()


def _dumps(msg: tuple) -> bytes:
    """Pickle ``msg``; an exception that will not pickle travels as an EngineError."""
    try:
        return pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        fixed = tuple(_plain(x) for x in msg)
        return pickle.dumps(fixed, protocol=pickle.HIGHEST_PROTOCOL)


def _plain(x: Any) -> Any:
    if isinstance(x, Failed):
        return Failed(_plain(x.error))
    if isinstance(x, BaseException):
        try:
            pickle.loads(pickle.dumps(x))
            return x
        except Exception:
            return EngineError(f"{type(x).__name__}: {x}")
    return x


def main() -> None:
    """Run one worker: hello, build, (self-test), ready, serve, close."""
    nice = int(os.environ.get(NICE_ENV, "0") or 0)
    if nice > 0:
        os.nice(nice)  # the API process (streams, health, admin) comes first on a busy CPU
    sock = socket.socket(fileno=int(os.environ[FD_ENV]))
    conn = Connection(sock.detach())
    _, hello = conn.recv()
    spec: EngineSpec = hello["spec"]
    config: Config = hello["config"]
    logging.basicConfig(level=hello.get("log_level", logging.INFO),
                        format=f"%(asctime)s worker[{spec.name}/{config.name}] "
                               "%(levelname)s %(name)s: %(message)s")
    try:
        engine = build(spec, config)
        if hello.get("selftest"):
            crash = bool(os.environ.get(CRASH_SELFTEST_ENV)) and not hello.get("fallback")
            try:
                selftest(spec, engine, crash)
            except BaseException:
                engine.close()
                raise
    except Exception as exc:
        conn.send_bytes(_dumps(("load_error", exc)))
        return
    server = Server(conn, spec, engine)
    server.send(("ready", payload(spec, engine)))
    try:
        server.run()
    finally:
        server.close()

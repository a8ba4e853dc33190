"""Dynamic batching for one model: requests with the same input shape share a run.

``workers`` threads own the model's session runs. ``submit`` puts an input in a bounded
queue (OverloadedError when full) and returns a Future. A free worker takes the oldest
request, then waits up to ``max_wait_ms`` (measured from that request's arrival) for
more requests with the same key (input shape) until ``max_batch``, runs them as one
batch and routes each row of the result to its caller's Future.

Measured with bench/vision.py on the development box (2 shared vCPUs, onnxruntime
1.32 CPU, other jobs running: load average 5-7, so +-30 % noise; cases interleaved over
3 rounds, medians), 16 concurrent clients, images/s:

    policy                                   yolov8n 320    PP-OCRv4 det 736x736
    serial: 1 worker x 2 threads, no batch      31.6            4.2
    batched: 1 worker x 2 threads, 8 / 4 ms     31.2            3.6   (mean batch 1.7)
    parallel: 2 workers x 1 thread, no batch    53.9            7.4
    default (auto = parallel here)              59.7            7.5
    raw session.run, 16 threads, 1 thread each 60.6            6.4

and with 1 client the default gives p50 11.7 ms (detector) against 36 ms for serial.
On CPU one multi-threaded run per model wastes cores (and batching only adds waiting),
so the default is ``max_batch=1`` with one single-threaded session run per core (up to
4; see VisionOptions.cpu_workers). A request that arrives alone (nothing queued, no run in
flight) runs on a second session that uses every core (``run_solo``), so one client gets
serial latency: on a quiet run of the same bench, default vs serial at 1 client was 9.3
vs 9.2 ms p50 (detector) and 40.3 vs 40.2 ms (OCR-det), and at 16 clients the default
kept the parallel throughput (138.6 vs serial 106.8 img/s, detector). On a GPU use one
worker and batching (``max_batch`` 8-16, ``max_wait_ms`` 2-5) via VisionOptions.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from engines.errors import EngineClosedError, InvalidRequestError, OverloadedError

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Item(Generic[T]):
    key: Hashable
    value: T
    future: Future
    arrived: float = field(default_factory=time.monotonic)


class DynamicBatcher(Generic[T, R]):
    """Groups submitted inputs by key and runs ``run_batch(list_of_inputs) -> results``.

    ``run_batch`` must return one result per input, in order. If it raises, every
    caller in that batch gets the exception.
    """

    def __init__(self, run_batch: Callable[[Sequence[T]], Sequence[R]], *, name: str,
                 max_batch: int = 1, max_wait_ms: float = 2.0, max_queue: int = 64,
                 workers: int = 1,
                 run_solo: Callable[[Sequence[T]], Sequence[R]] | None = None) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0 or workers < 1:
            raise InvalidRequestError(
                "max_batch, max_queue and workers must be >= 1, max_wait_ms >= 0")
        self._run = run_batch
        # A lone request (no other run in flight, nothing queued) may use every core.
        self._solo = run_solo
        self._busy = 0
        self.name = name
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self._queue: deque[_Item[T]] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._requests = 0
        self._batches = 0
        self._done = 0
        self._busy_s = 0.0
        self._wait_s = 0.0
        self._threads = [threading.Thread(target=self._loop, name=f"batcher-{name}-{i}",
                                          daemon=True) for i in range(workers)]
        for t in self._threads:
            t.start()

    # --- callers --------------------------------------------------------------------
    def submit(self, value: T, key: Hashable = None) -> Future:
        """Queue ``value``; the Future resolves to its result or raises its error.

        Raises OverloadedError (with ``retry_after``) when the queue is full and
        EngineClosedError after ``close``.
        """
        fut: Future = Future()
        with self._cond:
            if self._closed:
                raise EngineClosedError(f"model {self.name!r} is unloaded")
            if len(self._queue) >= self.max_queue:
                raise OverloadedError(
                    f"model {self.name!r} has {len(self._queue)} requests queued; try again",
                    retry_after=self._retry_after())
            self._queue.append(_Item(key, value, fut))
            self._requests += 1
            self._cond.notify_all()
        return fut

    def __call__(self, value: T, key: Hashable = None) -> R:
        """Submit and wait (blocking)."""
        return self.submit(value, key).result()

    def _retry_after(self) -> float:
        per_batch = self._busy_s / self._batches if self._batches else 0.05
        return round(max(0.1, per_batch * len(self._queue) / self.max_batch), 2)

    def stats(self) -> dict[str, float]:
        with self._cond:
            return {"queue_depth": float(len(self._queue)), "requests": float(self._requests),
                    "batches": float(self._batches),
                    "mean_batch_size": self._done / self._batches if self._batches else 0.0,
                    "busy_seconds": self._busy_s, "queue_wait_seconds": self._wait_s}

    def close(self) -> None:
        """Stop the worker; fail queued requests with EngineClosedError. Idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            pending = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for item in pending:
            item.future.set_exception(EngineClosedError(f"model {self.name!r} was unloaded"))
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout=30)

    # --- worker ---------------------------------------------------------------------
    def _take(self) -> list[_Item[T]] | None:
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            head = self._queue[0]
            deadline = head.arrived + self.max_wait
            while self.max_batch > 1 and not self._closed:
                same = sum(1 for it in self._queue if it.key == head.key)
                left = deadline - time.monotonic()
                if same >= self.max_batch or left <= 0:
                    break
                self._cond.wait(left)
            batch, rest = [], deque()
            for it in self._queue:
                if it.key == head.key and len(batch) < self.max_batch:
                    batch.append(it)
                else:
                    rest.append(it)
            self._queue = rest
            return batch

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            live = [it for it in batch if it.future.set_running_or_notify_cancel()]
            if not live:
                continue
            with self._cond:
                alone = (self._solo is not None and len(live) == 1 and not self._queue
                         and self._busy == 0)
                self._busy += 1
            run = self._solo if alone and self._solo is not None else self._run
            waited = sum(time.monotonic() - it.arrived for it in live)
            t0 = time.perf_counter()
            try:
                results = run([it.value for it in live])
                if len(results) != len(live):
                    raise RuntimeError(f"batch of {len(live)} gave {len(results)} results")
            except Exception as exc:  # routed to the callers
                log.debug("batch of %d failed on %s: %s", len(live), self.name, exc)
                for it in live:
                    it.future.set_exception(exc)
            else:
                for it, res in zip(live, results, strict=True):
                    it.future.set_result(res)
            with self._cond:
                self._busy -= 1
                self._wait_s += waited
                self._batches += 1
                self._done += len(live)
                self._busy_s += time.perf_counter() - t0


def stack_run(session: Any, input_name: str, output_index: int = 0
              ) -> Callable[[Sequence[Any]], list[Any]]:
    """A ``run_batch`` that concatenates (n_i, ...) arrays along axis 0, runs ``session``
    once and gives each input back its own n_i rows."""
    import numpy as np

    def run(inputs: Sequence[Any]) -> list[Any]:
        x = inputs[0] if len(inputs) == 1 else np.concatenate(inputs, axis=0)
        out = session.run(None, {input_name: x})[output_index]
        bounds = np.cumsum([0, *(len(a) for a in inputs)])
        return [out[a:b] for a, b in itertools.pairwise(bounds)]

    return run

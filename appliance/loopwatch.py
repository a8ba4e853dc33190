"""A thread that watches the event loop: how long a callback waits to run (loop lag).

Every ``every_s`` it schedules a no-op on the loop and times how long the loop takes to
run it. The lag goes to ``/metrics`` (``appliance_event_loop_lag_seconds``); a stall over
``stall_s`` is logged once with the loop thread's stack, so whatever blocked the loop is
named in the box's log.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback

from prometheus_client import Histogram

log = logging.getLogger(__name__)
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class LoopWatch:
    """Measures the lag of ``loop`` from a daemon thread until ``stop``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, lag: Histogram, *,
                 every_s: float = 0.01, stall_s: float = 0.25) -> None:
        self.loop, self.lag = loop, lag
        self.every_s, self.stall_s = every_s, stall_s
        self._loop_thread = threading.get_ident()  # constructed on the loop's thread
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loop-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            ran = threading.Event()
            started = time.perf_counter()
            try:
                self.loop.call_soon_threadsafe(ran.set)
            except RuntimeError:  # the loop closed
                return
            logged = False
            while not ran.wait(0.005):
                if self._stop.is_set():
                    return
                waited = time.perf_counter() - started
                if not logged and waited > self.stall_s:
                    logged = True
                    frame = sys._current_frames().get(self._loop_thread)
                    stack = "".join(traceback.format_stack(frame)[-12:]) if frame else "?"
                    log.warning("event loop stalled for over %.0f ms; it was running:\n%s",
                                waited * 1000, stack)
            self.lag.observe(time.perf_counter() - started)
            self._stop.wait(self.every_s)

"""A lone request runs on the all-cores session; concurrent ones on the per-worker runs."""

from __future__ import annotations

import threading
import time

from engines.vision.base import VisionOptions, _cores
from engines.vision.batcher import DynamicBatcher


def test_lone_request_uses_solo_run_and_busy_box_does_not() -> None:
    used: list[str] = []
    gate = threading.Event()

    def run(xs):
        used.append("shared")
        gate.wait(30)
        return xs

    def solo(xs):
        used.append("solo")
        gate.wait(30)
        return xs

    b = DynamicBatcher(run, name="t", workers=2, run_solo=solo)
    try:
        gate.set()
        assert b(1) == 1 and used == ["solo"]
        gate.clear()
        used.clear()
        first = b.submit(1)
        time.sleep(0.05)  # the first run is in flight when the others arrive
        rest = [b.submit(i) for i in range(2, 5)]
        time.sleep(0.05)
        gate.set()
        assert [f.result(5) for f in [first, *rest]] == [1, 2, 3, 4]
        assert used[0] == "solo" and used.count("shared") >= 2
    finally:
        b.close()


def test_solo_threads_only_when_it_adds_cores() -> None:
    assert VisionOptions(intra_op_threads=1).solo_threads("CPUExecutionProvider") == 0
    assert VisionOptions().solo_threads("CUDAExecutionProvider") == 0
    two = VisionOptions(workers=2)
    cores = _cores()
    expected = cores if cores >= 2 else 0
    assert two.solo_threads("CPUExecutionProvider") == expected
    assert VisionOptions(workers=1).solo_threads("CPUExecutionProvider") == 0

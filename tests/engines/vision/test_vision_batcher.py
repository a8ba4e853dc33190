"""Dynamic batcher: concurrency, routing, grouping by shape, queue bounds, shutdown."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from engines.errors import EngineClosedError, OverloadedError
from engines.vision.base import VisionOptions
from engines.vision.batcher import DynamicBatcher, stack_run
from engines.vision.detect import preprocess


@pytest.mark.slow
def test_concurrent_requests_are_batched_and_routed_to_their_callers(yolo_engine) -> None:
    rng = np.random.default_rng(0)
    inputs = [preprocess(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8), (320, 320))[0]
              for _ in range(16)]
    session = yolo_engine.session
    serial = [session.run(None, {"images": x})[0] for x in inputs]
    batcher = DynamicBatcher(stack_run(session, "images"), name="t", max_batch=8,
                             max_wait_ms=50, max_queue=64)
    try:
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(lambda x: batcher(x, key=x.shape), inputs))
        for got, want in zip(results, serial, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
        stats = batcher.stats()
        assert stats["requests"] == 16 and stats["mean_batch_size"] > 1.5
    finally:
        batcher.close()


def _gated() -> tuple[threading.Event, threading.Event, list[list[int]], DynamicBatcher]:
    started, release, seen = threading.Event(), threading.Event(), []

    def run(batch):
        seen.append(list(batch))
        started.set()
        release.wait(10)
        return [v * 10 for v in batch]

    return started, release, seen, DynamicBatcher(run, name="gated", max_batch=4,
                                                  max_wait_ms=0, max_queue=3)


def test_queue_full_raises_overloaded_with_retry_after() -> None:
    started, release, seen, b = _gated()
    try:
        first = b.submit(1)
        assert started.wait(30)  # the worker holds 1; the queue is empty again
        queued = [b.submit(v, key="k") for v in (2, 3, 4)]
        with pytest.raises(OverloadedError) as err:
            b.submit(5)
        assert err.value.retry_after > 0
        release.set()
        assert first.result(5) == 10 and [f.result(5) for f in queued] == [20, 30, 40]
        assert seen == [[1], [2, 3, 4]]
    finally:
        release.set()
        b.close()


def test_different_keys_are_never_mixed() -> None:
    started, release, seen, b = _gated()
    b.max_queue = 10
    try:
        head = b.submit(0, key="x")
        assert started.wait(30)
        futs = [b.submit(v, key="a" if v % 2 else "b") for v in range(1, 7)]
        release.set()
        assert [f.result(5) for f in futs] == [v * 10 for v in range(1, 7)]
        assert head.result(5) == 0
        assert seen[1:] == [[1, 3, 5], [2, 4, 6]]
    finally:
        b.close()


def test_errors_reach_every_caller_of_the_batch_and_close_fails_pending() -> None:
    def boom(batch):
        raise ValueError("bad batch")

    b = DynamicBatcher(boom, name="boom")
    with pytest.raises(ValueError, match="bad batch"):
        b(1)
    b.close()
    with pytest.raises(EngineClosedError):
        b.submit(2)

    started, release, _, g = _gated()
    g.submit(1)
    assert started.wait(30)
    pending = g.submit(2)
    threading.Timer(0.2, release.set).start()
    g.close()
    with pytest.raises(EngineClosedError):
        pending.result(5)


@pytest.mark.slow
def test_concurrent_ocr_requests_share_rec_batches_and_get_their_own_lines(model_store) -> None:
    """Multi-row rec chunks of different requests are concatenated and split back."""
    from vision_helpers import LINES, OCR, load, render_page

    pages = [render_page(LINES[i:i + 2], "plain", seed=i)[0] for i in range(0, 8, 2)]
    engine = load(model_store, OCR, VisionOptions(max_batch=4, max_wait_ms=30))
    try:
        serial = [[ln.text for ln in engine.ocr(p).lines] for p in pages]
        with ThreadPoolExecutor(4) as pool:
            together = list(pool.map(lambda p: [ln.text for ln in engine.ocr(p).lines], pages))
        assert together == serial
        # two rows of text per page (a row may be several boxes)
        assert [len(engine.ocr(p).text.split("\n")) for p in pages] == [2, 2, 2, 2]
    finally:
        engine.close()


def test_two_workers_run_two_batches_at_once() -> None:
    both = threading.Barrier(2, timeout=30)

    def run(batch):
        both.wait()  # returns only when two runs are in flight together
        return batch

    b = DynamicBatcher(run, name="pair", workers=2)
    try:
        f1, f2 = b.submit("a"), b.submit("b")
        assert (f1.result(5), f2.result(5)) == ("a", "b")
    finally:
        b.close()


def test_auto_policy_on_cpu() -> None:
    opts = VisionOptions()
    assert 1 <= opts.cpu_workers() <= 4 and opts.cpu_threads() >= 1
    assert opts.workers_for("CUDAExecutionProvider") == 1
    assert VisionOptions(workers=3, intra_op_threads=2).cpu_threads() == 2

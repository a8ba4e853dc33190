"""Nothing blocks the event loop: ``/healthz`` answers every 50 ms while the heaviest
requests run.

A separate process (so the test's own client threads cannot delay it) asks ``/healthz``
every 50 ms. Meanwhile, all at once: streamed and plain chats (one with a long prompt to
render and tokenise), a batch of embeddings, OCR and detection uploads, admin status and
metrics scrapes (engine gauges, nvidia-smi where there is one), the usage CSV, key issues
(audit rows with fsync), the audit chain check and a bundle upload that is refused after
it was written to disk. The longest wait between two answers of ``/healthz`` must stay
under ``MAX_GAP_S``.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor

import cv2
import httpx
import numpy as np
import pytest

from tests.conftest import DETECTOR, LLM, OCR
from tests.cpu_hog import HOGS_ENV
from tests.hardening.conftest import admin, new_seat

pytestmark = pytest.mark.slow
# The bound. What used to break it was not the loop: on the 2-core test machine the
# loop thread waited for a core (its run-queue wait in /proc/thread-self/schedstat matched
# the gap while its CPU time stayed near 1 ms), and the main competitor was this test's
# own 30 client threads at the box's priority. Real clients run on other machines, so the
# load generator runs nicer than the box (``_client_thread``); the box's own engine workers
# still compete at their `worker_nice`. Under `make test-busy` (CPU hogs at the box's own
# priority, on purpose) the bound is 1 s: that machine has no core to spare.
MAX_GAP_S = 1.0 if os.environ.get(HOGS_ENV) else 0.25
CLIENT_NICE = 10

PINGER = textwrap.dedent("""
    import json, os, sys, threading, time, httpx
    try:
        os.nice(-5)  # the measuring client itself must not be the one kept waiting
    except OSError:
        pass
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
    done = []
    with httpx.Client(base_url=sys.argv[1], timeout=10) as c:
        print("ready", flush=True)
        while not stop.is_set():
            t0 = time.perf_counter()
            assert c.get("/healthz").status_code == 200
            done.append(time.perf_counter())
            time.sleep(max(0.0, 0.05 - (done[-1] - t0)))
    print(json.dumps(done), flush=True)
""")


def _image() -> bytes:
    img = np.full((160, 640, 3), 255, np.uint8)
    cv2.putText(img, "Invoice 2026 total 12.50", (20, 90), cv2.FONT_HERSHEY_SIMPLEX, 1.2,
                (0, 0, 0), 2)
    return cv2.imencode(".png", img)[1].tobytes()


def _client_thread() -> None:
    """Each load thread runs nicer than the box, as a client on another machine would."""
    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), CLIENT_NICE)


def _rotate_keys(box, seat_id: int, times: int) -> int:
    """Issue and revoke keys (audit rows, each committed with fsync); the last status."""
    for _ in range(times):
        r = admin(box, "POST", f"/admin/seats/{seat_id}/keys")
        assert r.status_code == 201, r.text
        r = admin(box, "POST", f"/admin/keys/{r.json()['id']}/revoke")
    return r.status_code


def test_healthz_never_waits_behind_heavy_requests(fresh_box) -> None:
    box = fresh_box
    seat_id, key = new_seat(box, "heavy", max_concurrent=32, requests_per_minute=0,
                            tokens_per_day=0)
    auth = {"Authorization": f"Bearer {key}"}
    png = _image()
    long_prompt = " ".join(f"Clause {i}: the supplier delivers on time." for i in range(150))
    bundle = os.urandom(8 << 20)

    def post(path: str, **kw) -> int:
        return httpx.post(box.base_url + path, headers=auth, timeout=300, **kw).status_code

    def chat(content: str, stream: bool, max_tokens: int) -> int:
        body = {"model": LLM, "messages": [{"role": "user", "content": content}],
                "max_tokens": max_tokens, "temperature": 0, "stream": stream}
        if not stream:
            return post("/v1/chat/completions", json=body)
        with httpx.stream("POST", box.base_url + "/v1/chat/completions", json=body,
                          headers=auth, timeout=300) as r:
            for _ in r.iter_lines():
                pass
            return r.status_code

    # Every model loaded before the clock runs (loading spawns workers; that is not the loop).
    assert chat("Hi", False, 1) == 200
    assert post("/v1/vision/ocr", files={"file": ("p.png", png, "image/png")}) == 200
    assert post("/v1/vision/detect", files={"file": ("p.png", png, "image/png")},
                data={"model": DETECTOR}) == 200

    jobs = (
        [lambda i=i: chat(f"Tell me about the number {i}.", True, 48) for i in range(4)]
        + [lambda: chat(long_prompt + " Summarise.", False, 16),
           lambda: chat("Write a haiku.", False, 32),
           lambda: post("/v1/embeddings", json={"model": LLM, "input": [
               f"passage {i} about invoices and deliveries" for i in range(64)]}),
           lambda: post("/v1/vision/ocr", json={"image": base64.b64encode(png).decode(),
                                                "model": OCR}),
           lambda: post("/v1/vision/detect", files={"file": ("p.png", png, "image/png")},
                        data={"model": DETECTOR}),
           lambda: admin(box, "POST", "/admin/updates/inspect", content=bundle).status_code]
        + [lambda: admin(box, "GET", "/admin/status").status_code for _ in range(5)]
        + [lambda: admin(box, "GET", "/metrics").status_code for _ in range(5)]
        + [lambda: admin(box, "GET", "/admin/usage.csv").status_code for _ in range(3)]
        + [lambda: admin(box, "GET", "/admin/audit").status_code for _ in range(2)]
        + [lambda: _rotate_keys(box, seat_id, 3)]
    )
    pinger = subprocess.Popen([sys.executable, "-c", PINGER, box.base_url],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert pinger.stdout.readline().strip() == "ready"
        with ThreadPoolExecutor(len(jobs), initializer=_client_thread) as pool:
            statuses = list(pool.map(lambda job: job(), jobs))
        out, _ = pinger.communicate("stop\n", timeout=60)
    finally:
        if pinger.poll() is None:
            pinger.kill()
    assert pinger.returncode == 0, out
    done = json.loads(out.strip().splitlines()[-1])
    gaps = np.diff(done)
    assert all(s in (200, 201, 400) for s in statuses), str(list(enumerate(statuses)))
    assert statuses.count(400) == 1  # the random bundle, refused after it was received
    print(f"\nevent loop: {len(done)} /healthz answers over {done[-1] - done[0]:.1f} s; "
          f"worst gap {gaps.max() * 1000:.0f} ms, p99 {np.percentile(gaps, 99) * 1000:.0f} ms")
    assert len(done) > 20, "the heavy requests finished too fast to say anything"
    assert gaps.max() < MAX_GAP_S, f"the event loop stalled for {gaps.max() * 1000:.0f} ms"

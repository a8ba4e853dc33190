"""Engines in worker processes: a native crash costs one engine's requests, never the box.

A real box (uvicorn subprocess) serves SmolLM2 and PP-OCRv4 from worker processes. The
tests kill a worker with SIGKILL and with SIGSEGV while 8 streams (or OCR requests) are
in it, and check: those requests end with ``engine_crashed``, the box stays ready, the
worker is back within seconds, the next requests succeed, and the restarts show in the
audit log and /metrics. The box's own process never maps llama.cpp or ONNX Runtime.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import openai
import pytest

from tests.conftest import LLM, OCR, Box
from tests.hardening.conftest import admin, new_seat, start_box, wait_for

pytestmark = pytest.mark.slow

STREAMS = 8
RESTART_WITHIN_S = 60.0  # generous for a busy 2-core machine; a real hang still fails


@pytest.fixture(scope="module")
def box(model_store, tmp_path_factory, vendor_key):
    from tests.conftest import linked_models

    tmp = tmp_path_factory.mktemp("workers")
    server = start_box(tmp, linked_models(model_store.root, tmp / "models"), vendor_key)
    # a seat that may run all the test's requests at once (the admin seat's limit is 4)
    server.user_key = new_seat(server, "crash-tests", max_concurrent=16)[1]
    yield server
    server.stop()


def _model(box: Box, name: str) -> dict:
    r = admin(box, "GET", "/admin/models")
    assert r.status_code == 200, r.text
    return next(m for m in r.json() if m["name"] == name)


def _worker_pid(box: Box, name: str) -> int | None:
    m = _model(box, name)
    return m.get("worker_pid") if m["state"] == "loaded" else None


def _events(box: Box, model: str, event: str) -> float:
    text = admin(box, "GET", "/metrics").text
    total = 0.0
    for line in text.splitlines():
        if (line.startswith("appliance_engine_worker_events_total{")
                and f'model="{model}"' in line and f'event="{event}"' in line):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _client(box: Box) -> openai.OpenAI:
    key = getattr(box, "user_key", box.api_key)
    return openai.OpenAI(base_url=box.base_url + "/v1", api_key=key, max_retries=0, timeout=300)


def _stream(client: openai.OpenAI, started: threading.Event, out: list, i: int) -> None:
    try:
        stream = client.chat.completions.create(
            model=LLM, stream=True, temperature=0, max_tokens=1500,
            messages=[{"role": "user", "content": f"Write a very long story number {i}."}])
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                started.set()
        out.append(("finished", None))
    except openai.APIError as exc:
        out.append(("error", getattr(exc, "code", None)))
    finally:
        started.set()


def _restarted(box: Box, name: str, old_pid: int) -> bool:
    pid = _worker_pid(box, name)
    return pid is not None and pid != old_pid


def _maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSEGV], ids=["SIGKILL", "SIGSEGV"])
def test_llm_worker_crash_mid_stream(box: Box, sig: signal.Signals) -> None:
    client = _client(box)
    assert client.chat.completions.create(
        model=LLM, max_tokens=4, messages=[{"role": "user", "content": "hi"}]).choices
    pid = _worker_pid(box, LLM)
    assert pid and pid != box.proc.pid
    assert "libllama" in _maps(pid) and "libllama" not in _maps(box.proc.pid)
    crashes = _events(box, LLM, "crash")
    results: list = []
    started = [threading.Event() for _ in range(STREAMS)]
    threads = [threading.Thread(target=_stream, args=(client, started[i], results, i))
               for i in range(STREAMS)]
    for t in threads:
        t.start()
    for ev in started:
        assert ev.wait(240), "a stream never started"
    os.kill(pid, sig)
    for t in threads:
        t.join(120)
    assert results == [("error", "engine_crashed")] * STREAMS
    # the box itself did not notice beyond the restart
    assert httpx.get(box.base_url + "/healthz", timeout=10).status_code == 200
    assert httpx.get(box.base_url + "/readyz", timeout=10).status_code == 200
    assert box.proc.poll() is None
    assert wait_for(lambda: _restarted(box, LLM, pid), RESTART_WITHIN_S)
    reply = client.chat.completions.create(
        model=LLM, temperature=0, max_tokens=8,
        messages=[{"role": "user", "content": "Name a colour."}])
    assert reply.choices[0].message.content
    model = _model(box, LLM)
    assert model["worker_restarts"] >= 1
    assert signal.Signals(sig).name in model["worker_last_exit"]
    assert _events(box, LLM, "crash") == crashes + 1
    assert wait_for(lambda: _events(box, LLM, "restart") >= 1, 10)
    audit = admin(box, "GET", "/admin/audit", params={"q": "engine."}).json()
    actions = [(r["action"], r["details"].get("reason", "")) for r in audit["rows"]]
    assert ("engine.crash", f"was killed by {signal.Signals(sig).name}") in actions
    assert any(a == "engine.restart" for a, _ in actions)
    assert audit["chain_ok"]


def _page(lines: int = 40) -> bytes:
    img = np.full((1400, 1100, 3), 255, np.uint8)
    for i in range(lines):
        cv2.putText(img, f"Line {i} of the quarterly report 2026", (30, 40 + i * 33),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.9, (0, 0, 0), 2)
    return cv2.imencode(".png", img)[1].tobytes()


def test_vision_worker_crash(box: Box) -> None:
    image = _page()
    headers = {"Authorization": f"Bearer {box.user_key}"}

    def ocr() -> httpx.Response:
        return httpx.post(box.base_url + "/v1/vision/ocr", headers=headers, timeout=300,
                          files={"file": ("page.png", image, "image/png")})

    first = ocr()
    assert first.status_code == 200, first.text
    assert "quarterly" in first.json()["text"]
    pid = _worker_pid(box, OCR)
    assert pid and "libonnxruntime" in _maps(pid)
    assert "libonnxruntime" not in _maps(box.proc.pid)
    answers: list[httpx.Response] = []
    threads = [threading.Thread(target=lambda: answers.append(ocr())) for _ in range(8)]
    for t in threads:
        t.start()
    assert wait_for(lambda: _model(box, OCR)["in_use"] >= 4, 60, every=0.02)
    os.kill(pid, signal.SIGKILL)
    for t in threads:
        t.join(300)
    codes = [(r.status_code, r.json().get("error", {}).get("code")) for r in answers]
    assert len(codes) == 8 and (503, "engine_crashed") in codes, codes
    assert all(c in ((200, None), (503, "engine_crashed")) for c in codes), codes
    crashed = next(r for r in answers if r.status_code == 503)
    assert int(crashed.headers["Retry-After"]) >= 1
    assert httpx.get(box.base_url + "/readyz", timeout=10).status_code == 200
    assert wait_for(lambda: _restarted(box, OCR, pid), RESTART_WITHIN_S)
    again = ocr()
    assert again.status_code == 200 and again.json()["text"] == first.json()["text"]
    assert _events(box, OCR, "crash") >= 1


def test_unloading_a_model_ends_its_worker(box: Box) -> None:
    _client(box).chat.completions.create(
        model=LLM, max_tokens=2, messages=[{"role": "user", "content": "hi"}])
    pid = _worker_pid(box, LLM)
    assert pid
    assert admin(box, "POST", f"/admin/models/{LLM}/unload").status_code == 200
    assert wait_for(lambda: not Path(f"/proc/{pid}").exists()
                    or "zombie" in Path(f"/proc/{pid}/status").read_text(), 30)
    assert _model(box, LLM)["state"] == "unloaded"
    assert _events(box, LLM, "crash") >= 0  # an unload is no crash: nothing restarts it
    time.sleep(1)
    assert _model(box, LLM)["state"] == "unloaded"


def test_forced_self_test_crash_serves_in_the_safe_configuration(
        model_store, tmp_path_factory, vendor_key) -> None:
    """The documented test switch crashes the first self-test with SIGSEGV."""
    from tests.conftest import linked_models

    tmp = tmp_path_factory.mktemp("selftest")
    models = linked_models(model_store.root, tmp / "models")
    env = {"APPLIANCE_TEST_CRASH_SELFTEST": "1"}
    first = start_box(tmp, models, vendor_key, env)
    try:
        reply = _client(first).chat.completions.create(
            model=LLM, temperature=0, max_tokens=8,
            messages=[{"role": "user", "content": "Name a colour."}])
        assert reply.choices[0].message.content
        m = _model(first, LLM)
        assert m["worker_config"] == "safe"
        assert "SIGSEGV" in m["fallback"] and "extra buffer types" in m["fallback"]
        assert _events(first, LLM, "fallback") == 1
        audit = admin(first, "GET", "/admin/audit", params={"q": "engine.fallback"}).json()
        assert audit["rows"] and audit["rows"][-1]["details"]["config"] == "safe"
        doctor = _doctor(first)
        assert "safe" in doctor and "SIGSEGV" in doctor
    finally:
        first.stop()
    # remembered: the next start goes straight to the safe configuration, no self-test
    again = start_box(tmp, models, vendor_key, env)
    try:
        _client(again).chat.completions.create(
            model=LLM, max_tokens=2, messages=[{"role": "user", "content": "hi"}])
        m = _model(again, LLM)
        assert m["worker_config"] == "safe" and "SIGSEGV" in m["fallback"]
        assert _events(again, LLM, "fallback") == 0
        assert "self-test crashed" not in again.log_path.read_text()
    finally:
        again.stop()


def _doctor(box: Box) -> str:
    import subprocess
    import sys

    env = {**os.environ, "APPLIANCE_DATA_DIR": str(box.data_dir),
           "APPLIANCE_PORT": str(box.port), "APPLIANCE_CONFIG": os.devnull}
    proc = subprocess.run([sys.executable, "-m", "appliance.cli", "doctor"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_the_box_runs_asyncio_and_h11_even_with_uvloop_installed(box: Box) -> None:
    """The fleet extra installs uvloop and httptools (make test installs it); the box names
    its loop and parser instead of letting uvicorn pick them (``appliance.cli.SERVER_IMPL``),
    so installing an extra never changes the server a single box runs."""
    import importlib.util

    assert importlib.util.find_spec("uvloop") and importlib.util.find_spec("httptools")
    maps = _maps(box.proc.pid)
    assert "uvloop" not in maps and "httptools" not in maps

"""Several boxes as one: a head and two worker nodes on loopback serve one model.

Real ``ray start`` nodes (``tests/fleet/support.py``), the real box as the ingress, the
real SmolLM2 in engine workers inside Serve replicas. Slow: about two minutes on 2 cores.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import ray  # noqa: F401  (no fleet extra: fail loudly; make test installs it)

from tests.conftest import LLM, Box
from tests.fleet.support import (
    LoopbackFleet,
    appliance,
    fleet_head_box,
    running_fleet,
    sse_stream,
    usage_rows,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.fleet, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    with running_fleet(tmp_path_factory.mktemp("fleet") / "nodes") as f:
        yield f


@pytest.fixture(scope="module")
def head_box(fleet, model_store, tmp_path_factory):
    box = fleet_head_box(fleet, model_store.root, tmp_path_factory.mktemp("head-box"), {
        "APPLIANCE_FLEET_MIN_REPLICAS": "1",
        "APPLIANCE_FLEET_MAX_REPLICAS": "2", "APPLIANCE_FLEET_TARGET_ONGOING": "1",
        "APPLIANCE_FLEET_UPSCALE_DELAY_S": "1", "APPLIANCE_FLEET_DOWNSCALE_DELAY_S": "8",
        "APPLIANCE_LLM_SLOTS": "4", "APPLIANCE_LLM_CTX": "512",
        "APPLIANCE_IDLE_UNLOAD_S": "0"})
    yield box
    box.stop()


@pytest.fixture(scope="module")
def key(head_box: Box) -> str:
    """A user seat without concurrency or rate limits (the load is the point)."""
    auth = {"Authorization": f"Bearer {head_box.api_key}"}
    r = httpx.post(head_box.base_url + "/admin/seats", headers=auth, timeout=30, json={
        "name": "fleet-load", "role": "user", "max_concurrent": 0, "requests_per_minute": 0})
    assert r.status_code == 201, r.text
    k = httpx.post(head_box.base_url + f"/admin/seats/{r.json()['id']}/keys", headers=auth,
                   timeout=30)
    assert k.status_code == 201, k.text
    return k.json()["key"]


def _fleet_status(box: Box) -> dict:
    r = httpx.get(box.base_url + "/admin/fleet", timeout=30,
                  headers={"Authorization": f"Bearer {box.api_key}"})
    assert r.status_code == 200, r.text
    return r.json()


def _running(box: Box) -> int:
    return _fleet_status(box)["models"].get(LLM, {}).get("running", 0)


def _slots_gauge(box: Box) -> float | None:
    """The model's ``appliance_engine_slots`` in the head's /metrics (running replicas ×
    slots each: what the cloud-overflow rule reads), or None when it is not there."""
    r = httpx.get(box.base_url + "/metrics", timeout=30,
                  headers={"Authorization": f"Bearer {box.api_key}"})
    assert r.status_code == 200, r.text
    for line in r.text.splitlines():
        if line.startswith(f'appliance_engine_slots{{model="{LLM}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return None


def _burst(box: Box, key: str, n: int, max_tokens: int) -> list[dict]:
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda _: sse_stream(box.base_url, key, LLM,
                                                  max_tokens=max_tokens), range(n)))


def test_fleet_status_on_the_command_line(head_box: Box) -> None:
    r = appliance(head_box.data_dir, "status", "--api", head_box.base_url)
    assert r.returncode == 0, r.stdout + r.stderr
    status = json.loads(r.stdout)
    assert {"a", "b", "head"} <= {n["box"] for n in status["nodes"] if n["alive"]}
    assert "models" in status  # none loaded yet: the head loads a model on first use


def test_burst_scales_out_onto_both_boxes_and_idle_scales_back(head_box: Box, key: str
                                                                ) -> None:
    first = sse_stream(head_box.base_url, key, LLM, max_tokens=8)
    assert first["status"] == 200 and first["done"], first
    assert first["node"] in ("a", "b")
    assert _running(head_box) == 1
    # the head reached the replica over Serve's gRPC channel at load (the default)
    assert _fleet_status(head_box)["models"][LLM]["stream_channel"] == "grpc"
    seen: set[str] = set()
    grown = False
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (grown and seen == {"a", "b"}):
        results = _burst(head_box, key, 32, max_tokens=48)
        assert all(r["status"] == 200 and r["done"] for r in results), \
            [r for r in results if not r["done"]][:2]
        seen |= {r["node"] for r in results}
        grown = grown or _running(head_box) >= 2
    assert grown, "32 streams did not grow the model to 2 replicas"
    # the head counts the model's slots across its replicas (4 each here)
    assert wait_for(lambda: _slots_gauge(head_box) == 4 * _running(head_box), timeout=20,
                    every=1), (_slots_gauge(head_box), _running(head_box))
    assert seen == {"a", "b"}, f"served only by {seen}"
    status = _fleet_status(head_box)
    boxes = {n["box"]: n for n in status["nodes"] if n["alive"]}
    assert {"a", "b", "head"} <= set(boxes)
    assert all(boxes[b]["replicas"] for b in ("a", "b"))
    assert wait_for(lambda: _running(head_box) == 1, timeout=120, every=2), \
        "idle did not scale the model back to one replica"


def test_node_death_costs_only_its_streams_then_recovers(fleet: LoopbackFleet,
                                                         head_box: Box, key: str) -> None:
    before = len(usage_rows(head_box.data_dir / "appliance.db"))
    probe = sse_stream(head_box.base_url, key, LLM, max_tokens=4)
    victim = probe["node"]
    assert victim in ("a", "b")
    survivor = "b" if victim == "a" else "a"
    sent = 1
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(sse_stream, head_box.base_url, key, LLM,
                               max_tokens=400, prompt="Write a very long story.")
                   for _ in range(4)]
        sent += 4
        time.sleep(4.0)  # streams are running on the victim's replica
        fleet.boxes[victim].kill()
        results = [f.result(timeout=120) for f in futures]
    for r in results:
        assert r["status"] in (200, 503), r
        if not r["done"]:
            assert r["error"]["code"] == "engine_crashed", r
    assert any(not r["done"] for r in results), "no stream was in flight on the dead box"

    # the replica comes back on the other box: next requests succeed within a bound
    started = time.monotonic()
    ok = None
    while time.monotonic() - started < 120:
        r = sse_stream(head_box.base_url, key, LLM, max_tokens=8)
        sent += 1
        if r["status"] == 200 and r["done"]:
            ok = r
            break
        assert r["status"] == 503 or r["error"]["code"] == "engine_crashed", r
        time.sleep(1.0)
    assert ok is not None, "no request succeeded within 120 s of the node's death"
    assert ok["node"] == survivor
    recovery_s = time.monotonic() - started

    # the box rejoins and takes work again
    fleet.join(victim)
    seen: set[str] = set()
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and victim not in seen:
        results = _burst(head_box, key, 32, max_tokens=48)
        sent += 32
        assert all(r["status"] == 200 and r["done"] for r in results)
        seen |= {r["node"] for r in results}
    assert victim in seen, f"the rejoined box {victim} took no work"

    # every answered request has exactly one usage row
    time.sleep(1.0)
    rows = usage_rows(head_box.data_dir / "appliance.db")[before:]
    assert len(rows) == sent, (len(rows), sent)
    # each row names the box whose replica served it (the head's own name when none did)
    served = {r["box"] for r in rows if r["status"] == 200}
    assert served == {"a", "b"}, served
    print(f"recovered in {recovery_s:.1f}s")

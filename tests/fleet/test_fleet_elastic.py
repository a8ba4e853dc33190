"""Elastic fleet serving: a model scales to zero and wakes on demand (503 model_starting
while it starts), and prompts sharing a long system prompt keep to one replica.

Real ``ray start`` nodes on loopback (``tests/fleet/support.py``), the real box as the
ingress, the real SmolLM2 in the replicas. Two models on one head: SmolLM2 itself, allowed
to scale to zero, and a twin of it (the same GGUF under another name) held at two
replicas for the routing test. Half a core per replica, so both fit on two one-core boxes.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx
import pytest
import ray  # noqa: F401  (no fleet extra: fail loudly; make test installs it)
from textual.widgets import DataTable, Label

from tests.conftest import LLM, Box
from tests.fleet.support import fleet_head_box, running_fleet, wait_for
from tests.tui.support import settle, wait_until
from tui.app import AdminApp
from tui.client import AdminClient
from tui.screens.fleet import FleetScreen

pytestmark = [pytest.mark.slow, pytest.mark.fleet, pytest.mark.timeout(900)]
TWIN = "smollm2-twin"


def add_twin(models: Path, name: str = TWIN) -> None:
    """The test LLM's pack again under another name: its weights hard-linked, its manifest
    a new file (the store is linked into the shared test store: never write through it)."""
    src, dst = models / LLM, models / name
    dst.mkdir()
    manifest = json.loads((src / "manifest.json").read_text())
    manifest["name"] = name
    (dst / "manifest.json").write_text(json.dumps(manifest))
    for f in manifest["files"]:
        os.link(src / f["path"], dst / f["path"])


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    with running_fleet(tmp_path_factory.mktemp("elastic") / "nodes") as f:
        yield f


@pytest.fixture(scope="module")
def head_box(fleet, model_store, tmp_path_factory):
    box = fleet_head_box(fleet, model_store.root, tmp_path_factory.mktemp("elastic-box"), {
        "APPLIANCE_FLEET_MIN_REPLICAS": "2",
        "APPLIANCE_FLEET_MODEL_MIN_REPLICAS": json.dumps({LLM: 0}),
        "APPLIANCE_FLEET_MAX_REPLICAS": "2", "APPLIANCE_FLEET_TARGET_ONGOING": "4",
        "APPLIANCE_FLEET_REPLICA_CPUS": "0.5", "APPLIANCE_FLEET_UPSCALE_DELAY_S": "1",
        "APPLIANCE_FLEET_DOWNSCALE_DELAY_S": "3", "APPLIANCE_FLEET_LOOK_BACK_S": "11",
        "APPLIANCE_LLM_SLOTS": "2", "APPLIANCE_LLM_CTX": "1024",
        # tokens come as Ray objects here (the serving tests cover the default gRPC channel)
        "APPLIANCE_FLEET_STREAM_GRPC": "0",
        "APPLIANCE_IDLE_UNLOAD_S": "0"}, add_packs=add_twin)
    yield box
    box.stop()


def _auth(box: Box) -> dict[str, str]:
    return {"Authorization": f"Bearer {box.api_key}"}


def _model_status(box: Box, model: str) -> dict:
    r = httpx.get(box.base_url + "/admin/fleet", timeout=30, headers=_auth(box))
    assert r.status_code == 200, r.text
    return r.json()["models"].get(model, {})


def _running(box: Box, model: str) -> int:
    return _model_status(box, model).get("running", 0)


def _chat(box: Box, model: str, question: str, system: str | None = None
          ) -> httpx.Response:
    messages = [{"role": "user", "content": question}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    return httpx.post(box.base_url + "/v1/chat/completions", headers=_auth(box), timeout=120,
                      json={"model": model, "messages": messages, "max_tokens": 4,
                            "temperature": 0})


def _system(topic: str) -> str:
    """A long system prompt (some 300 tokens), one per topic."""
    rules = " ".join(f"Rule {i}: when asked about {topic}, answer briefly and cite "
                     f"section {i} of the {topic} handbook." for i in range(1, 16))
    return f"You are the {topic} desk of a company. {rules}"


def test_shared_system_prompt_keeps_to_one_replica(head_box: Box) -> None:
    warm = _chat(head_box, TWIN, "Hello")
    assert warm.status_code == 200, warm.text
    assert _model_status(head_box, TWIN)["stream_channel"] == "ray"  # fleet_stream_grpc off
    assert wait_for(lambda: _running(head_box, TWIN) == 2, timeout=180, every=2), \
        "the twin did not reach its two replicas"
    placed: dict[str, set[str]] = {"tax": set(), "travel": set()}
    for question in ("What is the first rule?", "Summarise rule 3.", "Who wrote it?"):
        for topic in placed:
            r = _chat(head_box, TWIN, question, system=_system(topic))
            assert r.status_code == 200, r.text
            placed[topic].add(r.headers["x-appliance-replica"])
    # each system prompt stayed on one replica; the two prompts went to the two replicas
    assert all(len(replicas) == 1 for replicas in placed.values()), placed
    assert placed["tax"] != placed["travel"], placed


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_tui_fleet_screen_shows_the_real_fleet(head_box: Box) -> None:
    """The admin TUI's Fleet screen against this head: its nodes, their health, and the
    twin's two replicas with the boxes they run on."""
    client = AdminClient(head_box.base_url, head_box.api_key, timeout=30)
    app = AdminApp(client, refresh_s=5)
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(pilot)
            await pilot.press("F")
            await settle(pilot)
            assert isinstance(app.screen, FleetScreen)
            nodes = app.screen.query_one("#nodes", DataTable)
            await wait_until(pilot, lambda: nodes.row_count == 3, timeout=30)
            rows = [nodes.get_row_at(i) for i in range(nodes.row_count)]
            assert [r[0] for r in rows] == ["head", "a", "b"]
            assert all(r[2] == "alive" for r in rows)
            replicas = app.screen.query_one("#replicas", DataTable)
            twins = [replicas.get_row_at(i) for i in range(replicas.row_count)
                     if replicas.get_row_at(i)[0] == TWIN]
            assert len(twins) == 2 and {r[2] for r in twins} <= {"a", "b"}
            assert "3 node(s), 3 alive" in str(app.screen.query_one("#fleet-note",
                                                                    Label).render())
    finally:
        client.close()


def test_idle_model_scales_to_zero_and_starts_on_demand(head_box: Box) -> None:
    first = _chat(head_box, LLM, "Hi")
    assert first.status_code == 200, first.text
    assert wait_for(lambda: _running(head_box, LLM) == 0, timeout=120, every=1), \
        "the idle model did not scale to zero"

    asked = time.monotonic()
    starting = _chat(head_box, LLM, "Hi again")
    assert time.monotonic() - asked < 10, "a request to a scaled-to-zero model waited"
    assert starting.status_code == 503, starting.text
    assert starting.json()["error"]["code"] == "model_starting", starting.text
    retry_after = int(starting.headers["retry-after"])
    assert retry_after >= 1

    served = None
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        time.sleep(min(retry_after, 5))
        r = _chat(head_box, LLM, "Hi again")
        if r.status_code == 200:
            served = r
            break
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_starting", r.text
        retry_after = int(r.headers["retry-after"])
    assert served is not None, "the model did not start on demand within 180 s"
    assert served.headers["x-appliance-node"] in ("a", "b")
    started_s = time.monotonic() - asked
    assert wait_for(lambda: _running(head_box, LLM) == 0, timeout=120, every=1), \
        "the model did not go back to zero replicas when idle again"
    print(f"woke in {started_s:.1f}s")

"""Vision models in a fleet: Serve replicas placed by resources, like language models.

A head (no cores) and one worker box with one core on loopback (addresses of their own,
so this module can run beside the other fleet tests), the real box as the ingress, the
real PP-OCRv4 in an engine worker inside a Serve replica on the worker box. A detector
whose manifest asks for TensorRT/CUDA finds no GPU node and is refused at once; once a box
that advertises a GPU joins (Ray takes ``--num-gpus`` on trust; there is no GPU here), the
replica is placed there and fails to find CUDA in this ONNX Runtime, and the load answers
with that reason instead of Serve retrying for ever.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

pytest.importorskip("ray", reason="fleet tests need the fleet extra: pip install '.[fleet]'")

from tests.conftest import DETECTOR, LLM, OCR, Box, linked_models
from tests.fleet.support import LoopbackFleet, fleet_head_box, running_fleet, usage_rows, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.fleet, pytest.mark.timeout(900)]

GPU_DETECTOR = "yolo-trt"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    with running_fleet(tmp_path_factory.mktemp("fleet-vision") / "nodes", boxes=("a",),
                       head_ip="127.0.0.30",
                       box_ips={"a": "127.0.0.31", "g": "127.0.0.32"}) as f:
        yield f


def _gpu_pack(models: Path) -> None:
    """The test detector again, under a name whose manifest asks for TensorRT then CUDA."""
    src, dst = models / DETECTOR, models / GPU_DETECTOR
    dst.mkdir()
    manifest = json.loads((src / "manifest.json").read_text())
    for f in manifest["files"]:
        os.link(src / f["path"], dst / f["path"])
    manifest.update(name=GPU_DETECTOR, providers=["tensorrt", "cuda"])
    (dst / "manifest.json").write_text(json.dumps(manifest))  # a new file, not a link


@pytest.fixture(scope="module")
def head_box(fleet, model_store, tmp_path_factory):
    box = fleet_head_box(fleet, model_store.root, tmp_path_factory.mktemp("vision-head"), {
        "APPLIANCE_FLEET_BOX": "head", "APPLIANCE_FLEET_MIN_REPLICAS": "1",
        "APPLIANCE_FLEET_MAX_REPLICAS": "1", "APPLIANCE_IDLE_UNLOAD_S": "0"},
        add_packs=_gpu_pack)
    yield box
    box.stop()


def _page() -> bytes:
    img = np.full((300, 900, 3), 255, np.uint8)
    for i, line in enumerate(("Quarterly report 2026", "Fleet vision replica")):
        cv2.putText(img, line, (30, 90 + i * 110), cv2.FONT_HERSHEY_SIMPLEX, 1.6,
                    (20, 20, 20), 3, cv2.LINE_AA)
    return cv2.imencode(".png", img)[1].tobytes()


def _admin(box: Box, method: str, path: str) -> httpx.Response:
    return httpx.request(method, box.base_url + path, timeout=600,
                         headers={"Authorization": f"Bearer {box.api_key}"})


def test_ocr_runs_in_a_replica_on_the_worker_box(head_box: Box) -> None:
    r = httpx.post(head_box.base_url + "/v1/vision/ocr", timeout=600,
                   headers={"Authorization": f"Bearer {head_box.api_key}"},
                   files={"file": ("page.png", _page(), "image/png")}, data={"model": OCR})
    assert r.status_code == 200, r.text
    assert "quarterly" in r.json()["text"].lower(), r.json()["text"]
    assert r.headers["x-appliance-node"] == "a"
    # the head never loads ONNX Runtime: the session lives in a worker on box a
    assert "libonnxruntime" not in Path(f"/proc/{head_box.proc.pid}/maps").read_text()
    status = _admin(head_box, "GET", "/admin/fleet").json()
    assert status["models"][OCR]["running"] == 1
    box_a = next(n for n in status["nodes"] if n["box"] == "a")
    assert [rep["model"] for rep in box_a["replicas"]] == [OCR]
    model = next(m for m in _admin(head_box, "GET", "/admin/models").json()
                 if m["name"] == OCR)
    assert model["state"] == "loaded" and model["provider"] == "CPUExecutionProvider"
    row = usage_rows(head_box.data_dir / "appliance.db", "/v1/vision/ocr")[-1]
    assert row["box"] == "a" and row["status"] == 200


def test_bad_image_is_still_a_400_through_the_fleet(head_box: Box) -> None:
    r = httpx.post(head_box.base_url + "/v1/vision/ocr", timeout=600,
                   headers={"Authorization": f"Bearer {head_box.api_key}"},
                   files={"file": ("page.png", b"not an image at all", "image/png")},
                   data={"model": OCR})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["message"]


def test_a_model_that_asks_for_a_gpu_goes_only_to_a_gpu_node(fleet: LoopbackFleet,
                                                             head_box: Box) -> None:
    r = _admin(head_box, "POST", f"/admin/models/{GPU_DETECTOR}/load")
    assert r.status_code == 503, r.text
    message = r.json()["error"]["message"]
    assert "GPU" in message and GPU_DETECTOR in message
    assert GPU_DETECTOR not in _admin(head_box, "GET", "/admin/fleet").json()["models"]

    fleet.join("g", gpus=1)
    assert wait_for(lambda: any(n["box"] == "g" and n["gpus"] == 1 for n in _admin(
        head_box, "GET", "/admin/fleet").json()["nodes"]), timeout=60)
    r = _admin(head_box, "POST", f"/admin/models/{GPU_DETECTOR}/load")
    assert r.status_code == 500, r.text
    message = r.json()["error"]["message"]
    assert f"replicas of {GPU_DETECTOR} did not start" in message
    assert "CUDAExecutionProvider" in message, message
    assert wait_for(lambda: GPU_DETECTOR not in _admin(head_box, "GET", "/admin/fleet").json()[
        "models"], timeout=120), "the failed application was not removed"
    # the CPU model on box a served on meanwhile
    test_ocr_runs_in_a_replica_on_the_worker_box(head_box)


def test_a_language_model_no_box_can_hold_is_refused_at_once(fleet: LoopbackFleet,
                                                             model_store,
                                                             tmp_path_factory) -> None:
    """Replicas of 4 cores on boxes of 1: 503 naming why, not a load that waits for ever."""
    tmp = tmp_path_factory.mktemp("big-head")
    data = tmp / "data"
    (data / "fleet").mkdir(parents=True)
    shutil.copy2(fleet.token, data / "fleet" / "join.token")
    box = Box(data, linked_models(model_store.root, tmp / "models"), env={
        "APPLIANCE_FLEET_ENABLED": "1", "APPLIANCE_FLEET_ADDRESS": fleet.head_ip,
        "APPLIANCE_FLEET_PORT": str(fleet.port), "APPLIANCE_FLEET_REPLICA_CPUS": "4"})
    try:
        r = httpx.post(box.base_url + "/v1/chat/completions", timeout=300,
                       headers={"Authorization": f"Bearer {box.api_key}"},
                       json={"model": LLM, "max_tokens": 4,
                             "messages": [{"role": "user", "content": "hi"}]})
    finally:
        box.stop()
    assert r.status_code == 503, r.text
    error = r.json()["error"]
    assert error["code"] == "fleet_unavailable" and "4 cores" in error["message"], error

"""The vision routes of the real app: multipart and JSON bodies, response schemas, errors."""

from __future__ import annotations

import base64
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from vision_helpers import DETECTOR, LINES, OCR, render_page, scene

from appliance.app import create_app
from appliance.settings import Settings


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("vision-box")


@pytest.fixture(scope="module")
def client(model_store, app_dir):
    """The real app (licence guard, lifecycle, registry, engine workers) with the admin
    key of its first start."""
    app = create_app(Settings(data_dir=app_dir, models_dir=model_store.root.resolve()))
    with TestClient(app) as c:
        c.app_ = app
        c.headers["Authorization"] = f"Bearer {(app_dir / 'admin.key').read_text().strip()}"
        yield c


def _png(img: np.ndarray) -> bytes:
    return cv2.imencode(".png", img)[1].tobytes()


@pytest.mark.slow
def test_ocr_multipart_and_json(client) -> None:
    img, _ = render_page(LINES[4:6], "plain")
    r = client.post("/v1/vision/ocr", files={"file": ("page.png", _png(img), "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "vision.ocr" and body["model"] == OCR
    # one row may come as several boxes, as the reference pipeline gives them
    # ("Quick brown" + "fox"); the text joins a row's boxes with a space
    assert body["text"] == "\n".join(LINES[4:6])
    assert " ".join(ln["text"] for ln in body["lines"]) == " ".join(LINES[4:6])
    assert all(len(ln["polygon"]) == 4 for ln in body["lines"])
    b64 = base64.b64encode(_png(img)).decode()
    r2 = client.post("/v1/vision/ocr", json={"image": f"data:image/png;base64,{b64}"})
    assert r2.status_code == 200 and r2.json()["lines"] == body["lines"]


@pytest.mark.slow
def test_detect_multipart_and_json(client) -> None:
    img = scene(0, 200, 300)
    r = client.post("/v1/vision/detect", files={"file": ("x.png", _png(img), "image/png")},
                    data={"model": DETECTOR, "conf": "0.002", "iou": "0.5"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["width"], body["height"]) == (300, 200) and body["detections"]
    for d in body["detections"]:
        assert 0 <= d["box"][0] <= d["box"][2] <= 300 and d["confidence"] >= 0.002
    r2 = client.post("/v1/vision/detect", json={
        "image": base64.b64encode(_png(img)).decode(), "model": DETECTOR, "conf": 0.002,
        "iou": 0.5})
    assert r2.json()["detections"] == body["detections"]


def test_bad_requests_are_clear_4xx(client) -> None:
    r = client.post("/v1/vision/ocr", json={"image": "***"})
    assert r.status_code == 400 and "base64" in r.json()["error"]["message"]
    r = client.post("/v1/vision/ocr", files={"file": ("x.bin", b"\x00" * 64)})
    assert r.status_code == 400 and "not a supported image" in r.json()["error"]["message"]
    r = client.post("/v1/vision/ocr", json={"image": "", "model": "nope"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = client.post("/v1/vision/detect", json={"image": "", "model": DETECTOR, "conf": 2})
    assert r.status_code == 400 and r.json()["error"]["param"] == "conf"


def test_openapi_documents_both_bodies_and_responses(client) -> None:
    doc = client.get("/openapi.json").json()
    op = doc["paths"]["/v1/vision/detect"]["post"]
    content = op["requestBody"]["content"]
    assert set(content) == {"application/json", "multipart/form-data"}
    assert content["application/json"]["schema"]["required"] == ["image", "model"]
    ref = op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert ref.endswith("/DetectResponse")
    assert "OcrResponse" in doc["components"]["schemas"]


@pytest.mark.slow
def test_guarded_and_typed(client) -> None:
    """The licence guard wants a key; an LLM is refused before it is loaded."""
    img, _ = render_page(LINES[4:5], "plain")
    r = client.post("/v1/vision/ocr", headers={"Authorization": ""},
                    files={"file": ("p.png", _png(img), "image/png")})
    assert r.status_code == 401
    r = client.post("/v1/vision/ocr", json={"image": base64.b64encode(_png(img)).decode(),
                                            "model": "smollm2-135m-instruct"})
    assert r.status_code == 400 and "not a vision model" in r.json()["error"]["message"]
    assert "smollm2-135m-instruct" not in client.app_.state.registry.loaded_engines()


def test_multipart_without_file_is_a_validation_error(client) -> None:
    r = client.post("/v1/vision/detect", data={"model": DETECTOR},
                    files={"other": ("x.txt", b"hello")})
    assert r.status_code == 400 and r.json()["error"]["param"] == "file"

"""The vision router over real engines: multipart and JSON bodies, response schemas."""

from __future__ import annotations

import base64

import cv2
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from vision_helpers import DETECTOR, LINES, OCR, render_page, scene

from appliance.api.vision import router
from appliance.errors import ModelNotFoundError
from engines.errors import InputError


class Registry:
    """The registry's acquire() contract over engines loaded by the test."""

    def __init__(self, engines: dict) -> None:
        self.engines = engines

    async def acquire(self, name: str):
        if name not in self.engines:
            raise ModelNotFoundError(name, sorted(self.engines))
        return self.engines[name]


@pytest.fixture(scope="module")
def client(ocr_engine, yolo_engine):
    app = FastAPI()
    app.include_router(router)
    app.state.registry = Registry({OCR: ocr_engine, DETECTOR: yolo_engine})

    class Anyone:  # a caller the licence covers for everything
        def entitle(self, model=None, feature=None) -> None:
            return None

    async def anyone(request):
        return Anyone()

    app.state.authenticate = anyone
    with TestClient(app) as c:
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
    assert [ln["text"] for ln in body["lines"]] == LINES[4:6]
    assert body["text"] == "\n".join(LINES[4:6])
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


def test_bad_requests_raise_for_the_central_handlers(client) -> None:
    with pytest.raises(InputError, match="base64"):
        client.post("/v1/vision/ocr", json={"image": "***"})
    with pytest.raises(InputError, match="not a supported image"):
        client.post("/v1/vision/ocr", files={"file": ("x.bin", b"\x00" * 64)})
    with pytest.raises(ModelNotFoundError):
        client.post("/v1/vision/ocr", json={"image": "", "model": "nope"})
    r = client.post("/v1/vision/detect", json={"image": "", "model": DETECTOR, "conf": 2})
    assert r.status_code == 422


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
def test_through_the_real_app(model_store, tmp_path) -> None:
    """create_app wires the router, the registry and the central error handlers."""
    app_mod = pytest.importorskip("appliance.app")
    settings_mod = pytest.importorskip("appliance.settings")
    app = app_mod.create_app(settings_mod.Settings(data_dir=tmp_path,
                                                   models_dir=model_store.root.resolve()))
    img, _ = render_page(LINES[4:5], "plain")
    with TestClient(app) as c:
        r = c.post("/v1/vision/ocr", files={"file": ("p.png", _png(img), "image/png")})
        assert r.status_code == 401  # the licence guard wants a seat's API key
        key = tmp_path / "admin.key"  # written on first start (evaluation licence)
        if key.is_file():
            c.headers["Authorization"] = f"Bearer {key.read_text().strip()}"
        r = c.post("/v1/vision/ocr", files={"file": ("p.png", _png(img), "image/png")})
        assert r.status_code == 200 and r.json()["text"] == LINES[4]
        r = c.post("/v1/vision/ocr", json={"image": "", "model": "nope"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        r = c.post("/v1/vision/detect", files={"file": ("x.bin", b"\x00" * 64)},
                   data={"model": DETECTOR})
        assert r.status_code == 400 and "not a supported image" in r.json()["error"]["message"]
        r = c.post("/v1/vision/ocr", json={"image": base64.b64encode(_png(img)).decode(),
                                           "model": "smollm2-135m-instruct"})
        assert r.status_code == 400 and "not a vision model" in r.json()["error"]["message"]
        assert "smollm2-135m-instruct" not in app.state.registry.loaded_engines()


def test_multipart_without_file_is_a_validation_error(client) -> None:
    r = client.post("/v1/vision/detect", data={"model": DETECTOR},
                    files={"other": ("x.txt", b"hello")})
    assert r.status_code == 422

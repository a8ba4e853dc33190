"""Vision requests show up in /metrics: images, batches, queue wait, provider in use."""

from __future__ import annotations

import cv2
import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import DETECTOR

pytestmark = pytest.mark.slow


def samples(box) -> dict[tuple[str, tuple], float]:
    text = httpx.get(box.base_url + "/metrics",
                     headers={"Authorization": f"Bearer {box.api_key}"}).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_detect_request_is_counted_with_its_provider(box) -> None:
    img = np.full((240, 320, 3), 200, np.uint8)
    cv2.circle(img, (160, 120), 60, (40, 40, 40), -1)
    png = cv2.imencode(".png", img)[1].tobytes()
    r = httpx.post(box.base_url + "/v1/vision/detect", timeout=60,
                   headers={"Authorization": f"Bearer {box.api_key}"},
                   files={"file": ("x.png", png, "image/png")}, data={"model": DETECTOR})
    assert r.status_code == 200, r.text
    assert r.json()["width"] == 320
    m = samples(box)
    assert m[("appliance_images_total", (("model", DETECTOR),))] >= 1
    assert m[("appliance_model_provider",
              (("model", DETECTOR), ("provider", "CPUExecutionProvider")))] == 1
    assert m[("appliance_engine_requests", (("model", DETECTOR),))] >= 1
    assert ("appliance_engine_queue_wait_seconds", (("model", DETECTOR),)) in m

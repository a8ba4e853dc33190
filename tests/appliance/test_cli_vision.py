"""`appliance models quantize` and `build-trt` through the real command line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from appliance.modelstore import ModelStore

pytestmark = pytest.mark.slow


def run(*args: str, data: Path, models: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "appliance.cli", "--data-dir", str(data),
                           *args], capture_output=True, text=True, timeout=600,
                          env={"APPLIANCE_CONFIG": "/dev/null", "PATH": "/usr/bin:/bin",
                               "APPLIANCE_MODELS_DIR": str(models), "COLUMNS": "200"})


def _calibration(folder: Path) -> Path:
    folder.mkdir()
    for i in range(4):
        img = np.full((240, 640, 3), 250 - 25 * i, np.uint8)
        cv2.putText(img, f"Order {1000 + i} shipped", (20, 80), cv2.FONT_HERSHEY_SIMPLEX,
                    1.2, (10, 10, 10), 2)
        cv2.putText(img, "Total 42.50 EUR", (20, 170), cv2.FONT_HERSHEY_SIMPLEX, 1.0,
                    (20, 20, 20), 2)
        cv2.imwrite(str(folder / f"{i}.png"), img)
    return folder


def test_quantize_ocr_adds_an_int8_pack_and_reports_accuracy(tmp_path: Path,
                                                             model_store: ModelStore) -> None:
    models = tmp_path / "models"
    models.mkdir()
    shutil.copytree(model_store.path("ppocr-v4"), models / "ppocr-v4")
    r = run("models", "quantize", "ppocr-v4", "--calibration",
            str(_calibration(tmp_path / "calib")), data=tmp_path / "data", models=models)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "agreement" in r.stdout and "ppocr-v4-int8" in r.stdout
    store = ModelStore(models)
    m = store.manifest("ppocr-v4-int8")
    assert m.quantisation == "int8-qdq" and store.verify("ppocr-v4-int8") == []
    assert {f.role for f in m.files} == {"det", "rec", "cls"}
    assert json.loads((models / "ppocr-v4-int8" / "manifest.json").read_text())[
        "int8_agreement"] >= 0.5


def test_quantize_without_images_and_build_trt_without_gpu_fail_clearly(
        tmp_path: Path, model_store: ModelStore) -> None:
    models = tmp_path / "models"
    models.mkdir()
    shutil.copytree(model_store.path("yolov8n-320-nudenet"), models / "det")
    manifest = json.loads((models / "det" / "manifest.json").read_text())
    manifest["name"] = "det"
    (models / "det" / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "empty").mkdir()
    q = run("models", "quantize", "det", "--calibration", str(tmp_path / "empty"),
            data=tmp_path / "data", models=models)
    assert q.returncode == 2 and "Traceback" not in q.stderr and "image" in q.stderr
    t = run("models", "build-trt", "det", data=tmp_path / "data", models=models)
    assert t.returncode == 2 and "TensorRT" in t.stderr and "Traceback" not in t.stderr

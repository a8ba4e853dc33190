"""INT8 static quantisation produces models that load, run and roughly agree with FP32."""

from __future__ import annotations

import cv2
import pytest
from vision_helpers import DETECTOR, LINES, OCR, render_page, scene

from engines.errors import InputError
from engines.vision.base import load_vision_model
from engines.vision.quantize import head_nodes, quantize_pack


@pytest.mark.slow
def test_quantised_detector_loads_and_runs(model_store, tmp_path) -> None:
    cal = tmp_path / "cal"
    cal.mkdir()
    for i in range(6):
        cv2.imwrite(str(cal / f"{i}.jpg"), scene(i, 360, 480))
    res = quantize_pack(model_store.manifest(DETECTOR).to_json(), model_store.path(DETECTOR),
                        cal, tmp_path / "out")
    path = res.files["weights"]
    assert path.parent == (tmp_path / "out").resolve() and path.stat().st_size > 0
    assert path.stat().st_size < model_store.file_path(DETECTOR).stat().st_size / 2
    assert res.images == 6 and 0.0 <= res.agreement <= 1.0
    assert {"box_f1@0.25", "score_mae", "fp32_ms", "int8_ms", "speedup"} <= res.metrics.keys()
    engine = load_vision_model({"name": "int8", "engine": "yolo",
                                "files": [{"path": path.name, "role": "weights"}]}, path.parent)
    try:
        out = engine.detect(cv2.imencode(".png", scene(9, 240, 320))[1].tobytes(), conf=0.01)
        assert (out.width, out.height) == (320, 240)
        assert engine.names[0] == "FEMALE_GENITALIA_COVERED"  # metadata survives
    finally:
        engine.close()


@pytest.mark.slow
def test_quantised_ocr_detector_keeps_the_text(model_store, tmp_path) -> None:
    cal = tmp_path / "cal"
    cal.mkdir()
    for i, kind in enumerate(["plain", "noise"]):
        cv2.imwrite(str(cal / f"{i}.png"), render_page(LINES[i * 3:i * 3 + 3], kind)[0])
    res = quantize_pack(model_store.manifest(OCR).to_json(), model_store.path(OCR), cal,
                        tmp_path / "out")
    assert res.quantised_roles == ("det",) and res.files["det"].name.endswith(".int8.onnx")
    assert res.files["rec"] == model_store.file_path(OCR, "rec").resolve()
    assert res.metrics["lines_fp32"] >= 5 and res.agreement >= 0.6
    assert res.metrics["char_similarity"] >= 0.9


def test_yolo_head_stays_float_and_empty_calibration_is_refused(model_store, tmp_path) -> None:
    nodes = head_nodes(model_store.file_path(DETECTOR))
    assert "/model.22/Sigmoid" in nodes and not any("Conv" in n.split("/")[-1] for n in nodes)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(InputError, match="no usable"):
        quantize_pack(model_store.manifest(DETECTOR).to_json(), model_store.path(DETECTOR),
                      tmp_path / "empty", tmp_path / "out")

"""The VisionEngine contract, run against every implementation; import boundaries."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from vision_helpers import DETECTOR, OCR, load, load_in_worker

from engines.errors import EngineClosedError
from engines.vision.base import VisionEngine, VisionOptions


@pytest.mark.slow
@pytest.mark.parametrize("where", ["in-process", "worker"])
@pytest.mark.parametrize("name", [OCR, DETECTOR])
def test_contract(model_store, name: str, where: str) -> None:
    loader = load if where == "in-process" else load_in_worker
    engine = loader(model_store, name, VisionOptions(max_batch=2, max_wait_ms=1))
    assert isinstance(engine, VisionEngine)
    assert engine.provider == "CPUExecutionProvider"
    assert len(engine.provider_report) == 2  # TensorRT and CUDA, each with a reason
    assert engine.memory_bytes > 100_000
    img = cv2.imencode(".png", np.full((64, 96, 3), 200, np.uint8))[1].tobytes()
    result = engine.ocr(img) if name == OCR else engine.detect(img)
    assert (result.width, result.height) == (96, 64)
    stats = engine.stats()
    assert stats["requests"] >= 1 and stats["queue_depth"] == 0
    engine.close()
    engine.close()  # idempotent
    with pytest.raises(EngineClosedError):
        engine.ocr(img) if name == OCR else engine.detect(img)


def test_engines_never_import_web_or_tui_frameworks() -> None:
    code = ("import sys, engines.vision.base, engines.vision.ocr, engines.vision.detect, "
            "engines.vision.quantize, engines.vision.tensorrt, engines.vision.batcher; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('fastapi', 'starlette', 'textual', 'appliance')); print(bad); "
            "sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=str(Path(__file__).resolve().parents[3]))
    assert proc.returncode == 0, proc.stdout + proc.stderr

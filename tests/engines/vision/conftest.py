"""Vision fixtures: real PP-OCRv4 and YOLOv8n engines loaded once per session."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# tests/ is on sys.path (rootdir conftest) and holds an ``engines`` folder, which would
# shadow the real package as a namespace package; put the checkout first.
_ROOT = str(Path(__file__).resolve().parents[3])
if sys.path[:1] != [_ROOT]:
    sys.path.insert(0, _ROOT)
sys.path.insert(1, str(Path(__file__).parent))  # for vision_helpers.py
if getattr(sys.modules.get("engines"), "__file__", "") is None:
    del sys.modules["engines"]

from vision_helpers import DETECTOR, OCR, load  # noqa: E402

from appliance.modelstore import ModelStore  # noqa: E402
from engines.vision.base import VisionEngine  # noqa: E402


@pytest.fixture(scope="session")
def ocr_engine(model_store: ModelStore) -> Iterator[VisionEngine]:
    engine = load(model_store, OCR)
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def yolo_engine(model_store: ModelStore) -> Iterator[VisionEngine]:
    engine = load(model_store, DETECTOR)
    yield engine
    engine.close()

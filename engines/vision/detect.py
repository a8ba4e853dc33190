"""YOLOv8/YOLO11 object detectors exported to ONNX (output ``[batch, 4 + nc, N]``).

Pre-processing letterboxes to the model's input size (RGB, /255); decoding turns each
column into a centre-xywh box and class scores, keeps ``score >= conf``, runs class-wise
NMS (cv2.dnn.NMSBoxes per class) and maps boxes back to original pixels.
"""

from __future__ import annotations

import ast
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from engines.errors import InvalidRequestError, ModelLoadError
from engines.vision.base import ImageInput, VisionEngine, VisionOptions, rss_bytes
from engines.vision.batcher import DynamicBatcher, stack_run
from engines.vision.image import Letterbox, as_bgr, letterbox, to_chw
from engines.vision.providers import open_session, solo_session
from engines.vision.types import Detection, Detections

log = logging.getLogger(__name__)
MAX_DETECTIONS = 300


def parse_class_names(raw: Any) -> dict[int, str]:
    """Class names from ONNX metadata (a Python dict literal, parsed safely) or a list/dict."""
    if isinstance(raw, str):
        try:
            raw = ast.literal_eval(raw)
        except (ValueError, SyntaxError) as exc:
            raise ModelLoadError(f"class names metadata is not a dict literal: {exc}") from exc
    if isinstance(raw, Mapping):
        return {int(k): str(v) for k, v in raw.items()}
    if isinstance(raw, Sequence):
        return {i: str(v) for i, v in enumerate(raw)}
    raise ModelLoadError("class names must be a list or a dict of id -> name")


def trt_shapes(input_size: tuple[int, int] | None, max_batch: int
               ) -> dict[str, tuple[tuple[int, ...], ...]]:
    """TensorRT profile (min, opt, max) of the detector input ``images``."""
    size = input_size or (640, 640)
    return {"images": ((1, 3, *size), (1, 3, *size), (max(1, max_batch), 3, *size))}


def preprocess(img: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, Letterbox]:
    """BGR image -> (1, 3, h, w) float32 RGB in 0..1, plus the letterbox mapping."""
    boxed, lb = letterbox(img, size)
    return to_chw(boxed, rgb=True)[None], lb


def decode(output: np.ndarray, lb: Letterbox, conf: float, iou: float,
           names: Mapping[int, str] | None = None, max_det: int = MAX_DETECTIONS
           ) -> list[Detection]:
    """One image's raw output (4 + nc, N) -> detections in original pixels, best first."""
    pred = np.asarray(output, np.float32)
    if pred.ndim == 3:
        pred = pred[0]
    scores = pred[4:].T  # (N, nc)
    cls = scores.argmax(axis=1)
    best = scores[np.arange(scores.shape[0]), cls]
    keep = best >= conf
    if not keep.any():
        return []
    xywh, cls, best = pred[:4, keep].T, cls[keep], best[keep]
    xyxy = np.empty_like(xywh)
    xyxy[:, :2] = xywh[:, :2] - xywh[:, 2:] / 2
    xyxy[:, 2:] = xywh[:, :2] + xywh[:, 2:] / 2
    kept: list[int] = []
    for c in np.unique(cls):
        idx = np.flatnonzero(cls == c)
        tlwh = np.concatenate([xyxy[idx, :2], xywh[idx, 2:]], axis=1)
        sel = cv2.dnn.NMSBoxes(tlwh.tolist(), best[idx].tolist(), conf, iou)
        kept.extend(idx[np.asarray(sel, int).reshape(-1)].tolist())
    kept.sort(key=lambda i: -best[i])
    kept = kept[:max_det]
    boxes = lb.to_original(xyxy[kept])
    names = names or {}
    return [Detection(int(cls[i]), names.get(int(cls[i]), str(int(cls[i]))),
                      round(float(best[i]), 5), tuple(round(float(v), 2) for v in b))
            for i, b in zip(kept, boxes, strict=True)]


class YoloEngine(VisionEngine):
    """A YOLOv8/YOLO11 detector; see ``VisionEngine`` for the contract."""

    kind = "detector"

    def __init__(self, name: str, weights: Path, *, options: VisionOptions | None = None,
                 override: Sequence[str] | None = None, class_names: Any = None,
                 input_size: tuple[int, int] | None = None) -> None:
        super().__init__(name)
        self.options = options or VisionOptions()
        rss0 = rss_bytes()
        opened = open_session(Path(weights), self.options, override,
                              trt_shapes=trt_shapes(input_size, self.options.max_batch))
        self._session, self._provider, self._report = (opened.session, opened.provider,
                                                       opened.report)
        inp = self._session.get_inputs()[0]
        self.input_name = inp.name
        meta = self._session.get_modelmeta().custom_metadata_map
        if class_names is None and "names" in meta:
            class_names = meta["names"]
        self.names = parse_class_names(class_names) if class_names is not None else {}
        self.input_size = input_size or self._size_from(inp.shape, meta)
        # warm-up: the first request does not pay for arena growth, and we can see it
        self._session.run(None, {self.input_name: np.zeros((1, 3, *self.input_size),
                                                           np.float32)})
        self._memory = max(Path(weights).stat().st_size, rss_bytes() - rss0)
        solo = solo_session(Path(weights), self.options, self._provider)
        self._batcher = DynamicBatcher(stack_run(self._session, self.input_name), name=name,
                                       max_batch=self.options.max_batch,
                                       max_wait_ms=self.options.max_wait_ms,
                                       max_queue=self.options.max_queue,
                                       workers=self.options.workers_for(self._provider),
                                       run_solo=stack_run(solo, self.input_name) if solo
                                       else None)
        log.info("loaded detector %s (%d classes, input %s) on %s", name, len(self.names),
                 self.input_size, self._provider)

    @staticmethod
    def _size_from(shape: Sequence[Any], meta: Mapping[str, str]) -> tuple[int, int]:
        if isinstance(shape[2], int) and isinstance(shape[3], int):
            return shape[2], shape[3]
        if "imgsz" in meta:
            hw = ast.literal_eval(meta["imgsz"])
            return int(hw[0]), int(hw[1])
        return 640, 640

    def preprocess(self, image: ImageInput) -> tuple[np.ndarray, Letterbox]:
        """Decode/validate and letterbox ``image`` to the (1, 3, h, w) model input."""
        return preprocess(as_bgr(image, self.options.limits), self.input_size)

    def run_raw(self, x: np.ndarray) -> np.ndarray:
        """The raw (1, 4 + nc, N) output for a preprocessed input, through the batcher."""
        return self._batcher(x, key=x.shape)

    def detect(self, image: ImageInput, conf: float = 0.25, iou: float = 0.45) -> Detections:
        if not (0.0 <= conf <= 1.0 and 0.0 <= iou <= 1.0):
            raise InvalidRequestError("conf and iou must be between 0 and 1")
        t0 = time.perf_counter()
        x, lb = self.preprocess(image)
        t1 = time.perf_counter()
        raw = self.run_raw(x)
        t2 = time.perf_counter()
        dets = decode(raw, lb, conf, iou, self.names)
        t3 = time.perf_counter()
        return Detections(lb.width, lb.height, tuple(dets), {
            "preprocess": (t1 - t0) * 1e3, "inference": (t2 - t1) * 1e3,
            "postprocess": (t3 - t2) * 1e3})

    @property
    def provider(self) -> str:
        return self._provider

    @property
    def provider_report(self) -> tuple[str, ...]:
        return self._report

    @property
    def memory_bytes(self) -> int:
        return self._memory

    @property
    def session(self) -> Any:
        """The underlying onnxruntime session (for benchmarks and quantisation checks)."""
        return self._session

    def stats(self) -> dict[str, float]:
        return self._batcher.stats()

    def close(self) -> None:
        self._batcher.close()

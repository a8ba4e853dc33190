"""PP-OCR (v4) text detection, direction classification and recognition.

Pipeline, after PaddleOCR/RapidOCR (our own code; parameters from rapidocr's config; the
parity test in tests/engines/vision/test_ocr_parity.py compares line texts with RapidOCR):
0. the page is resized into 30..2000 px sides (multiples of 32); a thin or very wide
   page (height <= 30 or width > 8x height) gets black bands above and below.
1. det: resize so the short side is >= 736 (long side <= 3200), multiples of 32,
   ``(x/255 - 0.5)/0.5`` BGR; the model gives a probability map.
2. DB post-processing: threshold 0.3, a 2x2 dilation, contours, min-area rectangles
   scored by the mean probability inside (>= 0.5), each expanded ("unclipped") by
   ``area * 1.6 / perimeter`` with pyclipper's round-joined offset, back to image pixels.
3. each box is cropped with a perspective warp (tall crops turned 90°); cls (48x192)
   flips crops it reads as upside-down with score > 0.9.
4. rec (48 px high, width by aspect ratio) then greedy CTC decoding against the
   character list in the model's metadata (blank at 0, a space appended).

Each session runs behind its own DynamicBatcher: det requests are grouped by input
shape (sides are multiples of 32, so same-size pages share a bucket), cls/rec chunks
by (height, width). Word spaces are fragile in PP-OCRv4 (a Chinese+English model): a
box a pixel narrower or wider changes them, so boxes follow the reference exactly.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyclipper

from engines.errors import ModelLoadError
from engines.vision.base import ImageInput, VisionEngine, VisionOptions, rss_bytes
from engines.vision.batcher import DynamicBatcher, stack_run
from engines.vision.image import as_bgr, to_chw
from engines.vision.providers import open_session, solo_session
from engines.vision.types import OcrLine, OcrResult

log = logging.getLogger(__name__)

DET_LIMIT_SIDE = 736
DET_MAX_SIDE = 3200  # det input long side; thin pages upscale past 2000 (as the reference)
DET_THRESH = 0.3
BOX_THRESH = 0.5
UNCLIP_RATIO = 1.6
MAX_CANDIDATES = 1000
MIN_BOX_SIDE = 3
CLS_SHAPE = (48, 192)
CLS_THRESH = 0.9
REC_HEIGHT, REC_WIDTH = 48, 320
REC_MAX_WIDTH = 2048  # widest rec input (TensorRT profile); longer lines are squeezed
TEXT_SCORE = 0.5
MIN_HEIGHT, WIDE_RATIO = 30, 8  # thinner or wider images are letterboxed for det
PAGE_MIN_SIDE, PAGE_MAX_SIDE = 30, 2000  # images are first resized into these bounds
BATCH = 6


def trt_shapes(max_batch: int) -> dict[str, dict[str, tuple[tuple[int, ...], ...]]]:
    """TensorRT profiles (min, opt, max) of the det/rec/cls input ``x``, by role."""
    b = max(1, max_batch)
    side = DET_LIMIT_SIDE
    return {
        "det": {"x": ((1, 3, 32, 32), (1, 3, side, side), (b, 3, DET_MAX_SIDE, DET_MAX_SIDE))},
        "rec": {"x": ((1, 3, REC_HEIGHT, 32), (BATCH, 3, REC_HEIGHT, REC_WIDTH),
                      (BATCH * b, 3, REC_HEIGHT, REC_MAX_WIDTH))},
        "cls": {"x": ((1, 3, *CLS_SHAPE), (BATCH, 3, *CLS_SHAPE),
                      (BATCH * b, 3, *CLS_SHAPE))},
    }


# --- detection ------------------------------------------------------------------------
def det_size(h: int, w: int, limit_side: int = DET_LIMIT_SIDE,
             max_side: int = DET_MAX_SIDE) -> tuple[int, int]:
    """Model input (h, w) for an image: short side up to ``limit_side``, long side capped."""
    ratio = limit_side / min(h, w) if min(h, w) < limit_side else 1.0
    if max(h, w) * ratio > max_side:
        ratio = max_side / max(h, w)
    return scaled32(h, w, ratio)


def scaled32(h: int, w: int, times: float, over: float = 1.0) -> tuple[int, int]:
    """(h, w) scaled by ``times / over``, truncated, then rounded to multiples of 32 (at
    least 32), as the reference does: a pixel of difference in the map moves box edges,
    and word spaces with them. (``over`` keeps the reference's ``h * limit / side``.)"""
    return (max(32, round(int(h * times / over) / 32) * 32),
            max(32, round(int(w * times / over) / 32) * 32))


def det_preprocess(img: np.ndarray, limit_side: int = DET_LIMIT_SIDE) -> np.ndarray:
    """BGR image -> (1, 3, H, W) det input."""
    h, w = det_size(*img.shape[:2], limit_side=limit_side)
    return to_chw(cv2.resize(img, (w, h)), mean=0.5, std=0.5)[None]


def order_box(pts: np.ndarray) -> np.ndarray:
    """Four points ordered top-left, top-right, bottom-right, bottom-left (PaddleOCR rule)."""
    pts = sorted(pts.tolist(), key=lambda p: p[0])
    left, right = sorted(pts[:2], key=lambda p: p[1]), sorted(pts[2:], key=lambda p: p[1])
    return np.array([left[0], right[0], right[1], left[1]], np.float32)


def mini_box(contour: np.ndarray) -> tuple[np.ndarray, float]:
    """Minimum-area rectangle of a contour (ordered points) and its shorter side."""
    rect = cv2.minAreaRect(contour.reshape(-1, 2).astype(np.float32))
    return order_box(cv2.boxPoints(rect)), min(rect[1])


def box_score(prob: np.ndarray, box: np.ndarray) -> float:
    """Mean probability inside the polygon ``box``."""
    h, w = prob.shape
    xmin = int(np.clip(np.floor(box[:, 0].min()), 0, w - 1))
    xmax = int(np.clip(np.ceil(box[:, 0].max()), 0, w - 1))
    ymin = int(np.clip(np.floor(box[:, 1].min()), 0, h - 1))
    ymax = int(np.clip(np.ceil(box[:, 1].max()), 0, h - 1))
    mask = np.zeros((ymax - ymin + 1, xmax - xmin + 1), np.uint8)
    cv2.fillPoly(mask, [(box - [xmin, ymin]).astype(np.int32)], 1)
    return float(cv2.mean(prob[ymin:ymax + 1, xmin:xmax + 1], mask)[0])


def unclip(box: np.ndarray, ratio: float = UNCLIP_RATIO) -> np.ndarray:
    """Expand a text box by ``area * ratio / perimeter`` (the DB paper's D).

    pyclipper's round-joined offset on integer coordinates, as the reference pipeline
    does: our own float Minkowski sum moved box edges by a pixel, which was enough for
    the recogniser to drop word spaces ("Coffeebeans12.50").
    """
    area = cv2.contourArea(box.astype(np.float32))
    length = cv2.arcLength(box.astype(np.float32), True)
    offset = pyclipper.PyclipperOffset()
    offset.AddPath(box, pyclipper.JT_ROUND, pyclipper.ET_CLOSEDPOLYGON)
    return np.array(offset.Execute(area * ratio / length if length else 0.0)).reshape(-1, 2)


DILATION = np.ones((2, 2), np.uint8)


def db_boxes(prob: np.ndarray, width: int, height: int, thresh: float = DET_THRESH,
             box_thresh: float = BOX_THRESH, unclip_ratio: float = UNCLIP_RATIO,
             max_candidates: int = MAX_CANDIDATES) -> list[np.ndarray]:
    """DB post-processing of a (H, W) probability map -> boxes (4, 2) in image pixels."""
    ph, pw = prob.shape
    bitmap = (prob > thresh).astype(np.uint8) * 255
    # The reference PP-OCR post-processing dilates the map with a 2x2 kernel before
    # finding regions: boxes keep the margin the recogniser needs to see word spaces.
    bitmap = cv2.dilate(bitmap, DILATION)
    contours, _ = cv2.findContours(bitmap, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    out = []
    for contour in contours[:max_candidates]:
        box, sside = mini_box(contour)
        if sside < MIN_BOX_SIDE or box_score(prob, box) < box_thresh:
            continue
        box, sside = mini_box(unclip(box, unclip_ratio))
        if sside < MIN_BOX_SIDE + 2:
            continue
        box[:, 0] = np.clip(np.round(box[:, 0] * width / pw), 0, width - 1)
        box[:, 1] = np.clip(np.round(box[:, 1] * height / ph), 0, height - 1)
        if (int(np.linalg.norm(box[0] - box[1])) <= MIN_BOX_SIDE
                or int(np.linalg.norm(box[0] - box[3])) <= MIN_BOX_SIDE):
            continue
        out.append(box)
    return out


def fit_sides(img: np.ndarray) -> tuple[np.ndarray, float, float]:
    """The image resized so its long side is at most ``PAGE_MAX_SIDE`` and its short side
    at least ``PAGE_MIN_SIDE`` (sides then rounded to multiples of 32, as the reference
    pipeline does), and the (y, x) factors that map its pixels back."""
    out, sy, sx = img, 1.0, 1.0
    for limit, too_big in ((PAGE_MAX_SIDE, True), (PAGE_MIN_SIDE, False)):
        h, w = out.shape[:2]
        side = max(h, w) if too_big else min(h, w)
        if (side > limit) if too_big else (side < limit):
            nh, nw = scaled32(h, w, limit, side)
            out = cv2.resize(out, (nw, nh))
            sy, sx = sy * h / nh, sx * w / nw
    return out, sy, sx


def pad_thin(img: np.ndarray) -> tuple[np.ndarray, int]:
    """A thin or very wide image with black bands above and below, and the band's height.

    The detector misreads a strip of text that fills its image (it was trained on
    pages): images at most ``MIN_HEIGHT`` high or wider than ``WIDE_RATIO`` times their
    height get bands that make them ``WIDE_RATIO``:2 (the reference pipeline's rule).
    """
    h, w = img.shape[:2]
    if h > MIN_HEIGHT and w / h <= WIDE_RATIO:
        return img, 0
    pad = abs(max(int(w / WIDE_RATIO), MIN_HEIGHT) * 2 - h) // 2
    return cv2.copyMakeBorder(img, pad, pad, 0, 0, cv2.BORDER_CONSTANT, value=(0, 0, 0)), pad


def reading_order(boxes: list[np.ndarray]) -> list[np.ndarray]:
    """Top-to-bottom, then left-to-right within a line (boxes whose tops are within
    half a line height of each other)."""
    boxes = sorted(boxes, key=lambda b: (b[0][1], b[0][0]))
    for i in range(len(boxes) - 1):
        for j in range(i, -1, -1):
            a, b = boxes[j], boxes[j + 1]
            tol = 0.5 * min(np.linalg.norm(a[0] - a[3]), np.linalg.norm(b[0] - b[3]))
            if abs(b[0][1] - a[0][1]) < max(tol, 1.0) and b[0][0] < a[0][0]:
                boxes[j], boxes[j + 1] = b, a
            else:
                break
    return boxes


def crop_box(img: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Perspective-crop the quadrilateral ``box``; crops 1.5x taller than wide turn 90°."""
    w = int(max(np.linalg.norm(box[0] - box[1]), np.linalg.norm(box[2] - box[3])))
    h = int(max(np.linalg.norm(box[0] - box[3]), np.linalg.norm(box[1] - box[2])))
    w, h = max(w, 1), max(h, 1)
    dst = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
    m = cv2.getPerspectiveTransform(box.astype(np.float32), dst)
    crop = cv2.warpPerspective(img, m, (w, h), borderMode=cv2.BORDER_REPLICATE,
                               flags=cv2.INTER_CUBIC)
    if h / w >= 1.5:
        crop = np.rot90(crop)
    return np.ascontiguousarray(crop)


# --- cls / rec --------------------------------------------------------------------------
def resize_norm(img: np.ndarray, height: int, width: int, max_width: int) -> np.ndarray:
    """Resize to ``height`` keeping ratio (at most ``max_width``), normalise, pad to ``width``."""
    h, w = img.shape[:2]
    rw = min(max_width, max(1, math.ceil(height * w / h)))
    x = to_chw(cv2.resize(img, (rw, height)), mean=0.5, std=0.5)
    out = np.zeros((3, height, width), np.float32)
    out[:, :, :rw] = x
    return out


def ctc_greedy(probs: np.ndarray, charset: Sequence[str]) -> list[tuple[str, float]]:
    """(n, T, C) softmax -> [(text, mean probability of kept characters)]; blank is 0."""
    idx = probs.argmax(axis=2)
    prob = probs.max(axis=2)
    out = []
    for row, p in zip(idx, prob, strict=True):
        keep = row != 0
        keep[1:] &= row[1:] != row[:-1]
        chars = [charset[i] for i in row[keep]]
        out.append(("".join(chars), float(p[keep].mean()) if keep.any() else 0.0))
    return out


def load_charset(meta: dict[str, str]) -> list[str]:
    """CTC character list from rec metadata: blank, the listed characters, a space."""
    raw = meta.get("character")
    if not raw:
        raise ModelLoadError("the rec model has no 'character' metadata (character dictionary)")
    return ["blank", *raw.split("\n"), " "]


def _solo_run(session: Any) -> Any:
    return stack_run(session, session.get_inputs()[0].name) if session is not None else None


class OcrEngine(VisionEngine):
    """PP-OCR det + (cls) + rec; see ``VisionEngine`` for the contract."""

    kind = "ocr"

    def __init__(self, name: str, *, det: Path, rec: Path, cls: Path | None = None,
                 options: VisionOptions | None = None, override: Sequence[str] | None = None,
                 det_limit_side: int = DET_LIMIT_SIDE) -> None:
        super().__init__(name)
        self.options = options or VisionOptions()
        self.det_limit_side = det_limit_side
        rss0 = rss_bytes()
        shapes = trt_shapes(self.options.max_batch)
        opened = open_session(Path(det), self.options, override, trt_shapes=shapes["det"])
        self._det, self._provider, self._report = opened.session, opened.provider, opened.report
        self._rec = open_session(Path(rec), self.options, override,
                                 trt_shapes=shapes["rec"]).session
        self._cls = open_session(Path(cls), self.options, override,
                                 trt_shapes=shapes["cls"]).session if cls else None
        self.charset = load_charset(self._rec.get_modelmeta().custom_metadata_map)
        n_out = self._rec.get_outputs()[0].shape[-1]
        if isinstance(n_out, int) and n_out != len(self.charset):
            raise ModelLoadError(f"rec model has {n_out} classes but its dictionary gives "
                                 f"{len(self.charset)}")
        self._warm_up()
        self._memory = max(sum(Path(p).stat().st_size for p in (det, rec, cls) if p),
                           rss_bytes() - rss0)
        # one batcher per session: det requests of the same size share runs; cls/rec
        # chunks of concurrent requests queue too, so every stage is bounded and the
        # number of session runs in flight stays at the configured workers
        solo = {stage: solo_session(Path(path), self.options, self._provider)
                for stage, path in (("det", det), ("cls", cls), ("rec", rec)) if path}
        self._batchers = {
            stage: DynamicBatcher(stack_run(sess, sess.get_inputs()[0].name),
                                  name=f"{name}/{stage}", max_batch=self.options.max_batch,
                                  max_wait_ms=self.options.max_wait_ms,
                                  max_queue=self.options.max_queue,
                                  workers=self.options.workers_for(self._provider),
                                  run_solo=_solo_run(solo.get(stage)))
            for stage, sess in (("det", self._det), ("cls", self._cls), ("rec", self._rec))
            if sess is not None}
        self._batcher = self._batchers["det"]
        log.info("loaded OCR model %s on %s", name, self._provider)

    def _warm_up(self) -> None:
        """One run per session at typical sizes (page 736x736, six lines), so the first
        request is not slow and the memory estimate includes the activation arenas."""
        self._det.run(None, {self._det.get_inputs()[0].name:
                             np.zeros((1, 3, DET_LIMIT_SIDE, DET_LIMIT_SIDE), np.float32)})
        self._rec.run(None, {self._rec.get_inputs()[0].name:
                             np.zeros((BATCH, 3, REC_HEIGHT, REC_WIDTH), np.float32)})
        if self._cls is not None:
            self._cls.run(None, {self._cls.get_inputs()[0].name:
                                 np.zeros((BATCH, 3, *CLS_SHAPE), np.float32)})

    # pipeline stages, public for benchmarks and quantisation checks
    def detect_boxes(self, img: np.ndarray) -> list[np.ndarray]:
        """Text boxes (4, 2) of a BGR image in reading order."""
        x = det_preprocess(img, self.det_limit_side)
        prob = self._batcher(x, key=x.shape)[0, 0]
        return reading_order(db_boxes(prob, img.shape[1], img.shape[0]))

    def classify(self, crops: list[np.ndarray]) -> list[np.ndarray]:
        """Turn crops the cls model reads as 180° (score >= 0.9) upright."""
        if self._cls is None or not crops:
            return crops
        out = list(crops)
        for s in range(0, len(crops), BATCH):
            x = np.stack([resize_norm(c, *CLS_SHAPE, CLS_SHAPE[1]) for c in crops[s:s + BATCH]])
            probs = self._batchers["cls"](x, key=x.shape[1:])
            for k, p in enumerate(probs):
                if int(p.argmax()) == 1 and p[1] > CLS_THRESH:
                    out[s + k] = cv2.rotate(crops[s + k], cv2.ROTATE_180)
        return out

    def recognise(self, crops: list[np.ndarray]) -> list[tuple[str, float]]:
        """(text, confidence) per crop; crops of similar width share a batch."""
        results: list[tuple[str, float]] = [("", 0.0)] * len(crops)
        order = np.argsort([c.shape[1] / c.shape[0] for c in crops])
        for s in range(0, len(crops), BATCH):
            ids = order[s:s + BATCH]
            ratio = max(REC_WIDTH / REC_HEIGHT,
                        max(crops[i].shape[1] / crops[i].shape[0] for i in ids))
            width = min(int(REC_HEIGHT * ratio), REC_MAX_WIDTH)
            x = np.stack([resize_norm(crops[i], REC_HEIGHT, width, width) for i in ids])
            probs = self._batchers["rec"](x, key=x.shape[1:])
            for i, res in zip(ids, ctc_greedy(probs, self.charset), strict=True):
                results[i] = res
        return results

    def ocr(self, image: ImageInput) -> OcrResult:
        t0 = time.perf_counter()
        img = as_bgr(image, self.options.limits)
        fitted, sy, sx = fit_sides(img)
        padded, top = pad_thin(fitted)
        boxes = self.detect_boxes(padded)
        t1 = time.perf_counter()
        crops = self.classify([crop_box(padded, b) for b in boxes])
        t2 = time.perf_counter()
        texts = self.recognise(crops)
        t3 = time.perf_counter()
        height, width = img.shape[:2]
        lines = tuple(
            OcrLine(text.strip(), round(score, 4),
                    tuple((float(min(max(x * sx, 0), width)),  # type: ignore[arg-type]
                           float(min(max((y - top) * sy, 0), height))) for x, y in box))
            for box, (text, score) in zip(boxes, texts, strict=True)
            if score >= TEXT_SCORE and text.strip())
        return OcrResult(img.shape[1], img.shape[0], lines, {
            "det": (t1 - t0) * 1e3, "cls": (t2 - t1) * 1e3, "rec": (t3 - t2) * 1e3})

    @property
    def det_session(self) -> Any:
        """The detection session (benchmarks, quantisation checks)."""
        return self._det

    @property
    def provider(self) -> str:
        return self._provider

    @property
    def provider_report(self) -> tuple[str, ...]:
        return self._report

    @property
    def memory_bytes(self) -> int:
        return self._memory

    def stats(self) -> dict[str, float]:
        """The det batcher's gauges, plus queue depth of cls/rec as ``<stage>_queue_depth``."""
        out = self._batcher.stats()
        for stage, b in self._batchers.items():
            if stage != "det":
                out[f"{stage}_queue_depth"] = b.stats()["queue_depth"]
        return out

    def close(self) -> None:
        for b in self._batchers.values():
            b.close()

"""INT8 static quantisation (QDQ) of vision models from a directory of calibration images.

``quantize_pack`` quantises a pack's ONNX files with onnxruntime's ``quantize_static``
(QDQ format, per-channel signed 8-bit weights, unsigned 8-bit activations, MinMax
calibration on inputs pre-processed exactly as the engine does), then runs FP32 and
INT8 side by side on the same images and reports agreement and speed:

- detector: box F1 between INT8 and FP32 detections (same class, IoU >= 0.5) at
  conf 0.25 and 0.05, plus the mean absolute difference of the raw class scores;
- OCR: the share of FP32 lines whose text INT8 reproduces exactly, and a character
  similarity (difflib ratio) of the whole text.

Only ``det`` is quantised for OCR by default: PP-OCRv4 rec loses accuracy in INT8.
"""

from __future__ import annotations

import difflib
import logging
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engines.errors import InputError, InvalidRequestError
from engines.vision.base import VisionEngine, VisionOptions, load_vision_model
from engines.vision.image import decode_image

log = logging.getLogger(__name__)
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


@dataclass(frozen=True)
class QuantizeResult:
    """What ``quantize_pack`` produced.

    ``files`` maps every role of the pack to a file: quantised roles point into the
    output directory, the others to the original files (copy them all into the new pack).
    ``agreement`` (0..1) is the headline accuracy of INT8 vs FP32 (box F1 at conf 0.25
    for detectors, exact line agreement for OCR); ``metrics`` has the details.
    """

    engine: str
    files: dict[str, Path]
    quantised_roles: tuple[str, ...]
    images: int
    agreement: float
    metrics: dict[str, float] = field(default_factory=dict)


def calibration_images(directory: Path, limit: int = 64) -> list[np.ndarray]:
    """Decoded BGR images from ``directory`` (sorted, at most ``limit``); InputError if none."""
    paths = sorted(p for p in Path(directory).iterdir() if p.suffix.lower() in IMAGE_EXTS)
    images = []
    for p in paths[:limit]:
        try:
            images.append(decode_image(p.read_bytes()))
        except InputError as exc:
            log.warning("skipping calibration image %s: %s", p.name, exc)
    if not images:
        raise InputError(f"no usable JPEG/PNG/WebP/BMP images in {directory}")
    return images


class _Reader:
    """onnxruntime CalibrationDataReader over pre-computed input tensors."""

    def __init__(self, name: str, tensors: Sequence[np.ndarray]) -> None:
        self._it: Iterator[np.ndarray] = iter(tensors)
        self.name = name

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._it, None)
        return None if x is None else {self.name: x}

    def rewind(self) -> None:  # required by newer ORT versions; one pass is enough here
        pass


def quantize_model(src: Path, dst: Path, input_name: str, tensors: Sequence[np.ndarray],
                   nodes_to_exclude: Sequence[str] = ()) -> Path:
    """Static INT8 QDQ quantisation of ``src`` into ``dst`` calibrated on ``tensors``."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        per_channel = _at_least_opset13(src, Path(tmp) / "opset13.onnx")
        source = Path(tmp) / "opset13.onnx" if per_channel == "converted" else src
        try:
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        except Exception as exc:  # pre-processing is an optimisation, not a requirement
            log.warning("quantisation pre-processing of %s failed (%s); using it as is",
                        src.name, exc)
            prepared = source
        quantize_static(str(prepared), str(dst), _Reader(input_name, tensors),
                        quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, per_channel=bool(per_channel),
                        calibrate_method=CalibrationMethod.MinMax,
                        nodes_to_exclude=list(nodes_to_exclude))
    return dst


def _at_least_opset13(src: Path, dst: Path) -> str:
    """Per-channel QDQ needs opset >= 13: "native", "converted" (written to ``dst``) or ""."""
    import onnx
    from onnx import version_converter

    model = onnx.load(str(src))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset >= 13:
        return "native"
    try:
        onnx.save(version_converter.convert_version(model, 13), str(dst))
    except Exception as exc:  # old exporters produce graphs the converter rejects
        log.warning("cannot convert %s from opset %d to 13 (%s); per-tensor quantisation",
                    src.name, opset, exc)
        return ""
    return "converted"


def head_nodes(model_path: Path) -> list[str]:
    """Nodes between the last convolutions and the outputs (the YOLO decode head).

    YOLOv8 concatenates boxes (0..640 px) and class scores (0..1) into one output; one
    INT8 scale for both wipes out the scores, so this decode part stays in FP32.
    """
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    producer = {out: node for node in graph.node for out in node.output}
    todo = [o.name for o in graph.output]
    seen: set[str] = set()
    names: list[str] = []
    while todo:
        node = producer.get(todo.pop())
        if node is None or node.name in seen or node.op_type == "Conv":
            continue
        seen.add(node.name)
        names.append(node.name)
        todo.extend(node.input)
    return names


def _box_f1(a: Sequence[Any], b: Sequence[Any], iou: float = 0.5) -> float:
    if not a and not b:
        return 1.0
    used: set[int] = set()
    hits = 0
    for d in a:
        for j, e in enumerate(b):
            if j in used or e.class_id != d.class_id:
                continue
            x1, y1 = max(d.box[0], e.box[0]), max(d.box[1], e.box[1])
            x2, y2 = min(d.box[2], e.box[2]), min(d.box[3], e.box[3])
            inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
            area = ((d.box[2] - d.box[0]) * (d.box[3] - d.box[1])
                    + (e.box[2] - e.box[0]) * (e.box[3] - e.box[1]) - inter)
            if area > 0 and inter / area >= iou:
                used.add(j)
                hits += 1
                break
    return 2 * hits / (len(a) + len(b))


def _paired(fn_a: Any, fn_b: Any, images: Sequence[np.ndarray]
            ) -> tuple[list[Any], list[Any], float, float]:
    """Run both on every image, alternating per image so load spikes hit both equally;
    returns both result lists and the mean ms per image of each."""
    fn_a(images[0]), fn_b(images[0])  # warm-up
    out_a, out_b, t_a, t_b = [], [], 0.0, 0.0
    for img in images:
        t0 = time.perf_counter()
        out_a.append(fn_a(img))
        t1 = time.perf_counter()
        out_b.append(fn_b(img))
        t_a, t_b = t_a + t1 - t0, t_b + time.perf_counter() - t1
    return out_a, out_b, t_a * 1e3 / len(images), t_b * 1e3 / len(images)


def compare_detectors(fp32: VisionEngine, int8: VisionEngine, images: Sequence[np.ndarray]
                      ) -> dict[str, float]:
    """Box F1 at conf 0.25/0.05, raw score MAE and per-image ms of two detectors."""
    metrics: dict[str, float] = {}
    for conf in (0.25, 0.05):
        a, b, ms_a, ms_b = _paired(lambda im, c=conf: fp32.detect(im, c).items,
                                   lambda im, c=conf: int8.detect(im, c).items, images)
        metrics[f"box_f1@{conf}"] = float(np.mean([_box_f1(x, y) for x, y in zip(a, b,
                                                                                  strict=True)]))
        metrics[f"boxes_fp32@{conf}"] = float(sum(map(len, a)))
        metrics[f"boxes_int8@{conf}"] = float(sum(map(len, b)))
        metrics["fp32_ms"], metrics["int8_ms"] = ms_a, ms_b
    maes = []
    for img in images:
        x, _ = fp32.preprocess(img)  # type: ignore[attr-defined]
        maes.append(float(np.abs(fp32.run_raw(x)[0, 4:]  # type: ignore[attr-defined]
                                 - int8.run_raw(x)[0, 4:]).mean()))  # type: ignore[attr-defined]
    metrics["score_mae"] = float(np.mean(maes))
    return metrics


def compare_ocr(fp32: VisionEngine, int8: VisionEngine, images: Sequence[np.ndarray]
                ) -> dict[str, float]:
    """Exact line (row of text) agreement, character similarity and per-image ms of two
    OCR engines."""
    a, b, ms_a, ms_b = _paired(fp32.ocr, int8.ocr, images)
    total = same = 0
    ratios = []
    for ra, rb in zip(a, b, strict=True):
        theirs = rb.text.split("\n")  # rows: the boxes of a row may be cut differently
        for row in ra.text.split("\n") if ra.lines else []:
            total += 1
            if row in theirs:
                theirs.remove(row)
                same += 1
        ratios.append(difflib.SequenceMatcher(None, ra.text, rb.text).ratio())
    return {"line_agreement": same / total if total else 1.0, "lines_fp32": float(total),
            "char_similarity": float(np.mean(ratios)), "fp32_ms": ms_a, "int8_ms": ms_b}


def quantize_pack(manifest: Mapping[str, Any], directory: Path, calibration_dir: Path,
                  out_dir: Path, *, roles: Sequence[str] | None = None, max_images: int = 64,
                  options: VisionOptions | None = None) -> QuantizeResult:
    """Quantise the pack in ``directory`` (described by ``manifest``) into ``out_dir``.

    ``roles`` picks files to quantise (default: "weights" for yolo, "det" for ocr).
    Raises InputError when the calibration directory has no usable image and
    InvalidRequestError for a pack that is not a vision model.
    """
    from engines.vision.base import _files
    from engines.vision.detect import preprocess
    from engines.vision.ocr import det_preprocess

    options = options or VisionOptions(providers=("cpu",))
    engine = manifest.get("engine")
    if engine not in ("yolo", "ocr"):
        raise InvalidRequestError(f"cannot quantise engine {engine!r}; only 'yolo' and 'ocr'")
    directory = Path(directory).resolve()
    files = {role: directory / p for role, p in _files(manifest).items()}
    roles = tuple(roles or (("weights",) if engine == "yolo" else ("det",)))
    unknown = set(roles) - files.keys()
    if unknown:
        raise InvalidRequestError(f"the pack has no files with roles {sorted(unknown)}")
    images = calibration_images(calibration_dir, max_images)
    out_dir = Path(out_dir).resolve()
    fp32 = load_vision_model(manifest, directory, options)
    try:
        new_files = dict(files)
        for role in roles:
            src = files[role]
            if engine == "yolo":
                tensors = [preprocess(img, fp32.input_size)[0]  # type: ignore[attr-defined]
                           for img in images]
                name = fp32.input_name  # type: ignore[attr-defined]
            elif role == "det":
                tensors = [det_preprocess(img, fp32.det_limit_side)  # type: ignore[attr-defined]
                           for img in images]
                name = "x"
            else:
                tensors = _ocr_crops(fp32, images, role)
                name = "x"
            t0 = time.perf_counter()
            exclude = head_nodes(src) if engine == "yolo" else []
            new_files[role] = quantize_model(src, out_dir / f"{src.stem}.int8.onnx", name,
                                             tensors, exclude)
            log.info("quantised %s (%s) in %.1fs", src.name, role, time.perf_counter() - t0)
        local = {**dict(manifest), "files": [{"role": r, "path": str(p)}
                                             for r, p in new_files.items()]}
        int8 = load_vision_model(local, Path("/"), options)
        try:
            if engine == "yolo":
                metrics = compare_detectors(fp32, int8, images)
                agreement = metrics["box_f1@0.25"]
            else:
                metrics = compare_ocr(fp32, int8, images)
                agreement = metrics["line_agreement"]
        finally:
            int8.close()
    finally:
        fp32.close()
    metrics["speedup"] = metrics["fp32_ms"] / metrics["int8_ms"] if metrics["int8_ms"] else 0.0
    return QuantizeResult(str(engine), new_files, roles, len(images), agreement, metrics)


def _ocr_crops(engine: VisionEngine, images: Sequence[np.ndarray], role: str
               ) -> list[np.ndarray]:
    """Calibration tensors for OCR rec/cls: text crops found by the FP32 detector."""
    from engines.vision.ocr import CLS_SHAPE, REC_HEIGHT, REC_WIDTH, crop_box, resize_norm

    out = []
    for img in images:
        for box in engine.detect_boxes(img):  # type: ignore[attr-defined]
            crop = crop_box(img, box)
            if role == "cls":
                out.append(resize_norm(crop, *CLS_SHAPE, CLS_SHAPE[1])[None])
            else:
                out.append(resize_norm(crop, REC_HEIGHT, REC_WIDTH, REC_WIDTH)[None])
    if not out:
        raise InputError("the calibration images contain no text the detector can find")
    return out

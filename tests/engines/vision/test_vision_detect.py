"""YOLO decoding checked against a plain reference implementation on real model output."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from vision_helpers import scene

from engines.errors import InvalidRequestError
from engines.vision.detect import decode, parse_class_names, preprocess
from engines.vision.image import Letterbox


def reference_decode(out: np.ndarray, lb: Letterbox, conf: float, iou: float
                     ) -> list[tuple[int, float, tuple[float, ...]]]:
    """Loop-by-loop YOLOv8 decoding with greedy per-class NMS, written for clarity."""
    cands = []
    for j in range(out.shape[1]):
        col = out[:, j]
        c = int(np.argmax(col[4:]))
        s = float(col[4 + c])
        if s < conf:
            continue
        cx, cy, w, h = (float(v) for v in col[:4])
        cands.append((c, s, [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]))
    cands.sort(key=lambda t: -t[1])

    def iou_of(a: list[float], b: list[float]) -> float:
        ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = ix * iy
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union if union > 0 else 0.0

    kept: list[tuple[int, float, list[float]]] = []
    for c, s, box in cands:
        if all(k[0] != c or iou_of(k[2], box) <= iou for k in kept):
            kept.append((c, s, box))
    result = []
    for c, s, (x1, y1, x2, y2) in kept:
        x1, x2 = ((v - lb.pad_x) / lb.scale for v in (x1, x2))
        y1, y2 = ((v - lb.pad_y) / lb.scale for v in (y1, y2))
        box = (min(max(x1, 0), lb.width), min(max(y1, 0), lb.height),
               min(max(x2, 0), lb.width), min(max(y2, 0), lb.height))
        result.append((c, s, box))
    return result


@pytest.mark.slow
@pytest.mark.parametrize(("seed", "shape"), [(0, (480, 640)), (1, (640, 360)), (2, (300, 900))])
def test_decode_matches_reference_on_real_output(yolo_engine, seed, shape) -> None:
    img = scene(seed, *shape)
    x, lb = preprocess(img, yolo_engine.input_size)
    raw = yolo_engine.run_raw(x)[0]
    assert raw.shape[0] == 4 + len(yolo_engine.names)
    conf, iou = 0.005, 0.45  # low threshold: many candidates, so NMS has work to do
    ours = decode(raw, lb, conf, iou, yolo_engine.names)
    ref = reference_decode(raw, lb, conf, iou)
    assert len(ref) >= 2 and len(ours) == len(ref)
    for d, (c, s, box) in zip(sorted(ours, key=lambda d: -d.confidence), ref, strict=True):
        assert d.class_id == c and d.label == yolo_engine.names[c]
        assert d.confidence == pytest.approx(s, abs=1e-4)
        np.testing.assert_allclose(d.box, box, atol=0.02)
        assert 0 <= d.box[0] <= d.box[2] <= shape[1] and 0 <= d.box[1] <= d.box[3] <= shape[0]


def test_decode_synthetic_boxes_mapping_and_nms() -> None:
    """Known boxes in letterboxed space come back at known original coordinates."""
    lb = Letterbox(scale=0.5, pad_x=0.0, pad_y=40.0, width=640, height=480)
    nc, n = 3, 6
    out = np.zeros((4 + nc, n), np.float32)
    cols = [  # cx, cy, w, h in model pixels, class, score
        (100, 100, 40, 40, 0, 0.9),
        (102, 101, 40, 40, 0, 0.8),   # overlaps the first, same class: suppressed
        (102, 101, 40, 40, 1, 0.7),   # same place, other class: kept (class-wise NMS)
        (300, 200, 60, 20, 2, 0.6),
        (200, 200, 10, 10, 2, 0.1),   # below conf
        (330, 280, 40, 40, 1, 0.5),   # runs off the image: clipped
    ]
    for j, (cx, cy, w, h, c, s) in enumerate(cols):
        out[:4, j] = cx, cy, w, h
        out[4 + c, j] = s
    dets = decode(out, lb, conf=0.25, iou=0.5, names={0: "a", 1: "b", 2: "c"})
    assert [(d.label, d.confidence) for d in dets] == [("a", 0.9), ("b", 0.7), ("c", 0.6),
                                                       ("b", 0.5)]
    assert dets[0].box == (160.0, 80.0, 240.0, 160.0)
    assert dets[2].box == (540.0, 300.0, 640.0, 340.0)
    assert dets[3].box == (620.0, 440.0, 640.0, 480.0)


def test_class_names_parsed_safely() -> None:
    assert parse_class_names("{0: 'person', 1: 'car'}") == {0: "person", 1: "car"}
    assert parse_class_names(["a", "b"]) == {0: "a", 1: "b"}
    with pytest.raises(Exception, match="dict literal"):
        parse_class_names("__import__('os').system('true')")


@pytest.mark.slow
def test_detect_end_to_end(yolo_engine) -> None:
    img = scene(3, 480, 640)
    _, buf = cv2.imencode(".jpg", img)
    res = yolo_engine.detect(buf.tobytes(), conf=0.01, iou=0.5)
    assert (res.width, res.height) == (640, 480)
    assert all(0 <= d.box[0] <= d.box[2] <= 640 for d in res.items)
    confs = [d.confidence for d in res.items]
    assert confs == sorted(confs, reverse=True)
    assert set(res.timings_ms) == {"preprocess", "inference", "postprocess"}
    with pytest.raises(InvalidRequestError):
        yolo_engine.detect(buf.tobytes(), conf=1.5)
    with pytest.raises(InvalidRequestError):
        yolo_engine.ocr(buf.tobytes())
    assert yolo_engine.provider == "CPUExecutionProvider"

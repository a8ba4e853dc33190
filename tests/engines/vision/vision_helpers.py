"""Helpers for the vision tests: loading real packs, drawing text images with OpenCV."""

from __future__ import annotations

import cv2
import numpy as np

from appliance.modelstore import ModelStore
from engines.vision.base import VisionEngine, VisionOptions, load_vision_model

OCR = "ppocr-v4"
DETECTOR = "yolov8n-320-nudenet"


def load(store: ModelStore, name: str, options: VisionOptions | None = None,
         **manifest_extra: object) -> VisionEngine:
    """Load a pack of the test store the way the registry does (manifest dict + folder)."""
    manifest = {**store.manifest(name).to_json(), **manifest_extra}
    return load_vision_model(manifest, store.path(name), options or VisionOptions())


def load_in_worker(store: ModelStore, name: str, options: VisionOptions | None = None
                   ) -> VisionEngine:
    """The same pack in a supervised worker process, as the box loads it."""
    from dataclasses import asdict

    from engines.worker.proxies import WorkerVisionEngine
    from engines.worker.spec import EngineSpec, vision_configs
    from engines.worker.supervisor import Supervisor

    params = {"manifest": store.manifest(name).to_json(), "directory": str(store.path(name)),
              "options": asdict(options or VisionOptions())}
    spec = EngineSpec("vision", name, params, "contract test", vision_configs(None))
    return WorkerVisionEngine(Supervisor(spec))

LINES = [
    "Hello World 2026",
    "INVOICE NUMBER 4711",
    "Total due 42.50 EUR",
    "open source inference",
    "Quick brown fox",
    "ACME Corporation",
    "Serial 8F3K-22Q",
    "meeting at 10:30",
]
FONTS = [cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_TRIPLEX]


def background(kind: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "gradient":
        ramp = np.linspace(190, 255, w, dtype=np.float32)[None, :, None]
        return np.broadcast_to(ramp * np.array([1.0, 0.95, 0.85]), (h, w, 3)).astype(np.uint8)
    if kind == "noise":
        return np.clip(rng.normal(225, 12, (h, w, 3)), 0, 255).astype(np.uint8)
    if kind == "dark":
        return np.full((h, w, 3), (60, 40, 30), np.uint8)
    return np.full((h, w, 3), (245, 240, 230), np.uint8)


Box = tuple[int, int, int, int]


def render_page(texts: list[str], kind: str = "plain", angle: float = 0.0, seed: int = 0,
                width: int = 1000) -> tuple[np.ndarray, list[tuple[str, Box]]]:
    """An image with one text line per entry; returns it and (text, xyxy box) per line."""
    rng = np.random.default_rng(seed)
    line_h = 90
    h = 40 + line_h * len(texts)
    img = background(kind, h, width, rng).copy()
    color = (245, 245, 245) if kind == "dark" else (20, 20, 20)
    boxes = []
    for i, text in enumerate(texts):
        font = FONTS[i % len(FONTS)]
        scale = 1.5 + 0.15 * (i % 3)
        (tw, th), base = cv2.getTextSize(text, font, scale, 2)
        x, y = 30, 30 + line_h * i + th
        cv2.putText(img, text, (x, y), font, scale, color, 2, cv2.LINE_AA)
        boxes.append((text, (x, y - th, x + tw, y + base)))
    if angle:
        m = cv2.getRotationMatrix2D((width / 2, h / 2), angle, 1.0)
        img = cv2.warpAffine(img, m, (width, h), borderMode=cv2.BORDER_REPLICATE)
    return img, boxes


def scene(seed: int, h: int, w: int) -> np.ndarray:
    """Coloured ellipses on a flat background (gives the detector weak candidates)."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), rng.integers(40, 220, 3), np.uint8)
    for _ in range(12):
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        color = tuple(int(v) for v in rng.integers(0, 255, 3))
        cv2.ellipse(img, (x, y), (int(rng.integers(10, w // 3)), int(rng.integers(10, h // 3))),
                    float(rng.integers(0, 180)), 0, 360, color, -1)
    return img


RECEIPT_ITEMS = [("Coffee beans", "12.50"), ("Whole milk 1L", "1.19"), ("Bread rye", "3.40"),
                 ("Olive oil extra virgin", "8.99"), ("Apples 2 kg", "4.20"),
                 ("Dark chocolate", "2.75"), ("Green tea 20 bags", "3.10"),
                 ("Paper towels", "5.60")]


def render_receipt(seed: int) -> np.ndarray:
    """A till receipt: shop name, six items with right-aligned prices, a total."""
    rng = np.random.default_rng(seed)
    picked = [RECEIPT_ITEMS[i] for i in rng.choice(len(RECEIPT_ITEMS), 6, replace=False)]
    total = sum(float(price) for _, price in picked)
    rows = [("CORNER MARKET", ""), ("Main Street 12, Springfield", ""), *picked,
            ("TOTAL", f"{total:.2f}"), ("Thank you for shopping", "")]
    w, line_h = 640, 44
    img = np.full((30 + line_h * len(rows), w, 3), 250, np.uint8)
    font = FONTS[seed % 2]
    scale, thick = 0.8 + 0.1 * (seed % 3), 2 - seed % 2
    for i, (left, right) in enumerate(rows):
        y = 34 + line_h * i
        cv2.putText(img, left, (20, y), font, scale, (25, 25, 25), thick, cv2.LINE_AA)
        if right:
            (tw, _), _ = cv2.getTextSize(right, font, scale, 2)
            cv2.putText(img, right, (w - 20 - tw, y), font, scale, (25, 25, 25), thick,
                        cv2.LINE_AA)
    return img


def render_rotated(text: str, angle: float, seed: int = 0) -> np.ndarray:
    """One line of text turned by ``angle`` degrees on a canvas that holds all of it."""
    img, _ = render_page([text], "plain", 0.0, seed, width=900)
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    c, s = abs(m[0, 0]), abs(m[0, 1])
    nw, nh = int(h * s + w * c), int(h * c + w * s)
    m[0, 2] += nw / 2 - w / 2
    m[1, 2] += nh / 2 - h / 2
    return cv2.warpAffine(img, m, (nw, nh), borderValue=(245, 240, 230))


def render_strip(text: str, height: int, width: int) -> np.ndarray:
    """A tight strip of text, as a crop of a larger scan would be."""
    img = np.full((height, width, 3), 250, np.uint8)
    cv2.putText(img, text, (8, height - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (20, 20, 20), 2,
                cv2.LINE_AA)
    return img

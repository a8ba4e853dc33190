"""Plain results of vision engines (frozen dataclasses, JSON-friendly via ``to_dict``)."""

from __future__ import annotations

from dataclasses import dataclass, field

Point = tuple[float, float]


@dataclass(frozen=True)
class OcrLine:
    """One recognised text line.

    ``polygon`` holds four corners (top-left, top-right, bottom-right, bottom-left) in
    pixels of the original image; ``confidence`` is the mean CTC probability of its
    characters (0..1).
    """

    text: str
    confidence: float
    polygon: tuple[Point, Point, Point, Point]

    def to_dict(self) -> dict:
        return {"text": self.text, "confidence": self.confidence,
                "polygon": [list(p) for p in self.polygon]}


@dataclass(frozen=True)
class OcrResult:
    """All lines of an image in reading order (top-to-bottom, then left-to-right)."""

    width: int
    height: int
    lines: tuple[OcrLine, ...] = ()
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def text(self) -> str:
        """The lines joined by newlines."""
        return "\n".join(line.text for line in self.lines)


@dataclass(frozen=True)
class Detection:
    """One detected object: ``box`` is (x1, y1, x2, y2) in original image pixels, clipped."""

    class_id: int
    label: str
    confidence: float
    box: tuple[float, float, float, float]

    def to_dict(self) -> dict:
        return {"class_id": self.class_id, "label": self.label,
                "confidence": self.confidence, "box": list(self.box)}


@dataclass(frozen=True)
class Detections:
    """Detections of one image, highest confidence first."""

    width: int
    height: int
    items: tuple[Detection, ...] = ()
    timings_ms: dict[str, float] = field(default_factory=dict)

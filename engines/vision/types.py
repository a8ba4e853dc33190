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
        """The page's text: one line per row, the boxes of a row joined by a space.

        The detector (like the reference pipeline) may give one row several boxes
        ("Quick brown" and "fox"); a box is on the previous box's row when their tops are
        within half the smaller box height, the rule ``reading_order`` sorts by."""
        rows: list[list[str]] = []
        last: OcrLine | None = None
        for line in self.lines:
            if last is not None and _same_row(last, line):
                rows[-1].append(line.text)
            else:
                rows.append([line.text])
            last = line
        return "\n".join(" ".join(row) for row in rows)


def _same_row(a: OcrLine, b: OcrLine) -> bool:
    def top_and_height(line: OcrLine) -> tuple[float, float]:
        (x0, y0), _, _, (x3, y3) = line.polygon
        return y0, ((x3 - x0) ** 2 + (y3 - y0) ** 2) ** 0.5

    ya, ha = top_and_height(a)
    yb, hb = top_and_height(b)
    return abs(yb - ya) < max(0.5 * min(ha, hb), 1.0)


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

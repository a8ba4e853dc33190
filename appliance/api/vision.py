"""Vision endpoints: OCR and object detection on uploaded images.

Both routes take either a multipart upload (``file`` plus form fields) or a JSON body
with the image as base64, and go through the request lifecycle like every inference
route (admission, lease, inference in a worker thread, one usage row per image).
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError

from appliance.deps import CallDep, SettingsDep
from engines.errors import InputError
from engines.vision.base import VisionEngine

router = APIRouter(prefix="/v1/vision", tags=["vision"])
DEFAULT_OCR_MODEL = "ppocr-v4"
VISION_MODEL = "a vision model"

M = TypeVar("M", bound=BaseModel)
Unit = Annotated[float, Field(ge=0.0, le=1.0)]
Point = Annotated[list[float], Field(min_length=2, max_length=2)]


class OcrRequest(BaseModel):
    """JSON form of an OCR request."""

    image: str = Field(description="The image (JPEG, PNG, WebP or BMP) as base64 or a data URL.")
    model: str | None = Field(None, description="OCR model name; default: the box's "
                              f"default OCR model ({DEFAULT_OCR_MODEL!r} unless configured).")


class DetectRequest(BaseModel):
    """JSON form of a detection request."""

    image: str = Field(description="The image (JPEG, PNG, WebP or BMP) as base64 or a data URL.")
    model: str = Field(description="Detector model name.")
    conf: Unit = Field(0.25, description="Minimum confidence.")
    iou: Unit = Field(0.45, description="IoU threshold of class-wise non-maximum suppression.")


class OcrLineOut(BaseModel):
    text: str
    confidence: float = Field(description="Mean character probability, 0..1.")
    polygon: Annotated[list[Point], Field(min_length=4, max_length=4)] = Field(
        description="Corners (top-left, top-right, bottom-right, bottom-left) in image pixels.")


class OcrResponse(BaseModel):
    object: Literal["vision.ocr"] = "vision.ocr"
    model: str
    width: int
    height: int
    text: str = Field(description="The text in reading order: one line per row, the boxes of "
                      "a row joined by a space.")
    lines: list[OcrLineOut]
    timings_ms: dict[str, float]


class DetectionOut(BaseModel):
    class_id: int
    label: str
    confidence: float
    box: Annotated[list[float], Field(min_length=4, max_length=4)] = Field(
        description="x1, y1, x2, y2 in image pixels, clipped to the image.")


class DetectResponse(BaseModel):
    object: Literal["vision.detection"] = "vision.detection"
    model: str
    width: int
    height: int
    detections: list[DetectionOut]
    timings_ms: dict[str, float]


def _body_schema(json_model: type[BaseModel], form_fields: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI requestBody accepting JSON (``json_model``) or multipart (``file`` + fields)."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": json_model.model_json_schema()},
        "multipart/form-data": {"schema": {
            "type": "object", "required": ["file"],
            "properties": {"file": {"type": "string", "format": "binary"}, **form_fields}}},
    }}}


def _b64(text: str) -> bytes:
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InputError(f"'image' is not valid base64: {exc}") from exc


async def _parse(request: Request, model: type[M]) -> tuple[bytes, M]:
    """Image bytes and validated fields from a multipart or JSON body."""
    ctype = request.headers.get("content-type", "")
    try:
        if ctype.startswith("multipart/form-data"):
            form = await request.form()
            try:
                upload = form.get("file")
                if upload is None or isinstance(upload, str):
                    raise RequestValidationError([{"type": "missing", "loc": ("body", "file"),
                                                   "msg": "Field required (an image file)",
                                                   "input": None}])
                data = await upload.read()
                fields = {k: v for k, v in form.items() if k != "file" and isinstance(v, str)}
            finally:
                await form.close()  # removes spooled temporary files now
            return data, model.model_validate({**fields, "image": ""})
        params = model.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from exc
    return _b64(params.image), params  # type: ignore[attr-defined]  # both models have it


@router.post("/ocr", response_model=OcrResponse, summary="Read the text in an image",
             openapi_extra=_body_schema(OcrRequest, {
                 "model": {"type": "string"}}))
async def ocr(request: Request, call: CallDep, settings: SettingsDep) -> OcrResponse:
    data, params = await _parse(request, OcrRequest)
    name = params.model or settings.default_ocr
    engine = await call.lease(name, "ocr", VisionEngine, VISION_MODEL)
    res = await call.run(engine.ocr, data)
    call.images += 1
    return OcrResponse(model=name, width=res.width, height=res.height, text=res.text,
                       lines=[OcrLineOut(text=ln.text, confidence=ln.confidence,
                                         polygon=[list(p) for p in ln.polygon])
                              for ln in res.lines],
                       timings_ms=res.timings_ms)


@router.post("/detect", response_model=DetectResponse, summary="Detect objects in an image",
             openapi_extra=_body_schema(DetectRequest, {
                 "model": {"type": "string"},
                 "conf": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.25},
                 "iou": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.45}}))
async def detect(request: Request, call: CallDep) -> DetectResponse:
    data, p = await _parse(request, DetectRequest)
    engine = await call.lease(p.model, "detect", VisionEngine, VISION_MODEL)
    res = await call.run(engine.detect, data, p.conf, p.iou)
    call.images += 1
    return DetectResponse(model=p.model, width=res.width, height=res.height,
                          detections=[DetectionOut(class_id=d.class_id, label=d.label,
                                                   confidence=d.confidence, box=list(d.box))
                                      for d in res.items],
                          timings_ms=res.timings_ms)

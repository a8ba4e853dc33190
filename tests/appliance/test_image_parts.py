"""Image content parts: what a data URL must be before an image reaches a model (pure)."""

from __future__ import annotations

import base64
import struct
import zlib

import cv2
import numpy as np
import pytest

from appliance.api.image_parts import LIMITS, image_from_url
from appliance.api.openai_schemas import ChatCompletionRequest
from appliance.modelstore import parse_manifest


def png(color: tuple[int, int, int] = (0, 0, 255), size: int = 32) -> bytes:
    img = np.zeros((size, size, 3), np.uint8)
    img[:] = color  # BGR
    ok, data = cv2.imencode(".png", img)
    assert ok
    return data.tobytes()


def data_url(data: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64,{base64.b64encode(data).decode()}"


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (a decompression bomb's shape)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_a_data_url_gives_the_image_bytes() -> None:
    data = png()
    assert image_from_url(data_url(data)) == data
    _, jpeg = cv2.imencode(".jpg", np.full((16, 16, 3), 200, np.uint8))
    assert image_from_url(data_url(jpeg.tobytes(), "image/jpeg")) == jpeg.tobytes()
    # whitespace inside the base64 (line-wrapped encoders) is fine
    wrapped = data_url(data).replace("AAAA", "AA\nAA", 1)
    assert image_from_url(wrapped) == data


@pytest.mark.parametrize("url,says", [
    ("https://example.com/cat.png", "no internet access"),
    ("http://10.0.0.1/cat.png", "no internet access"),
    ("ftp://example.com/cat.png", "data URL"),
    ("cat.png", "data URL"),
    ("data:text/plain;base64,aGVsbG8=", "'text/plain'"),
    ("data:application/pdf;base64,JVBERi0=", "'application/pdf'"),
    ("data:image/png,rawbytes", "base64"),
    ("data:image/png;base64,!!!not-base64!!!", "not valid base64"),
    ("data:image/png;base64,", "empty"),
    ("data:image/png;base64," + base64.b64encode(b"GIF89a" + b"\0" * 40).decode(),
     "not a supported image"),
])
def test_what_is_not_an_inline_image_is_refused_saying_why(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        image_from_url(url)


def test_oversized_images_are_refused_from_the_header() -> None:
    with pytest.raises(ValueError, match="MP"):
        image_from_url(data_url(png_header_only(30000, 30000)))
    big = LIMITS.max_bytes + 1
    with pytest.raises(ValueError, match="bytes"):
        image_from_url(data_url(b"\x89PNG\r\n\x1a\n" + b"\0" * (big - 8)))


def test_a_truncated_png_is_refused() -> None:
    with pytest.raises(ValueError, match="truncated"):
        image_from_url(data_url(png()[:40]))


def _chat(content, role: str = "user", **extra) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": role, "content": content}], **extra})


def test_chat_messages_carry_images_in_order_behind_a_marker() -> None:
    a, b = png((0, 0, 255)), png((255, 0, 0))
    body = _chat([{"type": "text", "text": "Compare "},
                  {"type": "image_url", "image_url": {"url": data_url(a)}},
                  {"type": "text", "text": " and "},
                  {"type": "image_url", "image_url": {"url": data_url(b), "detail": "auto"}}])
    assert body.images() == [a, b]
    assert body.messages[0].rendered("<I>")["content"] == "Compare <I> and <I>"
    with pytest.raises(ValueError, match="takes images"):
        body.messages[0].rendered()


@pytest.mark.parametrize("content,role,says", [
    ([{"type": "image_url", "image_url": {"url": "x", "detail": "high"}}], "user", "detail"),
    ([{"type": "image_url", "image_url": {"url": data_url(png())}}], "assistant",
     "only user messages"),
    ([{"type": "image_url"}], "user", "needs 'image_url'"),
    ([{"type": "input_audio", "input_audio": {}}], "user", "image_url"),
    ([{"type": "image_url", "image_url": {"url": data_url(png())}}] * 9, "user", "at most 8"),
])
def test_image_parts_the_box_cannot_read_are_refused(content, role, says) -> None:
    with pytest.raises(ValueError, match=says):
        _chat(content, role)


def _manifest(files: list[dict]) -> dict:
    return {"name": "vlm", "engine": "llama", "format": "gguf", "files": files}


def test_a_chat_pack_with_a_projector_takes_images() -> None:
    weights = {"path": "m.gguf", "sha256": "0" * 64, "size": 1}
    proj = {"path": "mmproj.gguf", "sha256": "1" * 64, "size": 1, "role": "projector"}
    import json

    vlm = parse_manifest(json.dumps(_manifest([weights, proj])))
    assert vlm.has_projector and "vision-chat" in vlm.capabilities
    assert "chat" in vlm.capabilities
    plain = parse_manifest(json.dumps(_manifest([weights])))
    assert not plain.has_projector and "vision-chat" not in plain.capabilities

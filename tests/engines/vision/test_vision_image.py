"""Safe decoding: header parsing, bombs, truncation, letterbox geometry."""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest

from engines.errors import InputError
from engines.vision.image import ImageLimits, as_bgr, decode_image, letterbox, read_header


def _img(h: int = 37, w: int = 53) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (h, w, 3), dtype=np.uint8)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_bomb(w: int, h: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


@pytest.mark.parametrize("ext", [".png", ".jpg", ".webp", ".bmp"])
def test_header_matches_real_encoders(ext: str) -> None:
    img = _img()
    ok, buf = cv2.imencode(ext, img)
    assert ok
    header = read_header(buf.tobytes())
    assert (header.width, header.height) == (53, 37)
    decoded = decode_image(buf.tobytes())
    assert decoded.shape == (37, 53, 3)


def test_lossless_webp_header() -> None:
    ok, buf = cv2.imencode(".webp", _img(20, 300), [cv2.IMWRITE_WEBP_QUALITY, 101])
    assert ok and buf.tobytes()[12:16] == b"VP8L"
    assert (read_header(buf.tobytes()).width, read_header(buf.tobytes()).height) == (300, 20)


def test_random_bytes_rejected() -> None:
    data = np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    with pytest.raises(InputError, match="not a supported image"):
        decode_image(data)


def test_empty_rejected() -> None:
    with pytest.raises(InputError, match="empty"):
        decode_image(b"")


@pytest.mark.parametrize("ext", [".png", ".jpg", ".webp", ".bmp"])
def test_truncated_rejected(ext: str) -> None:
    _, buf = cv2.imencode(ext, _img(200, 200))
    data = buf.tobytes()
    with pytest.raises(InputError, match=r"truncated|corrupt|decode"):
        decode_image(data[: len(data) // 2])


def test_png_bomb_header_refused_before_decoding() -> None:
    data = _png_bomb(30000, 30000)
    assert len(data) < 200  # 900 MP claimed by a tiny file
    with pytest.raises(InputError, match="30000x30000"):
        decode_image(data)


def test_jpeg_bomb_header_refused() -> None:
    _, buf = cv2.imencode(".jpg", _img(16, 16))
    data = bytearray(buf.tobytes())
    i = data.find(b"\xff\xc0")
    data[i + 5:i + 9] = struct.pack(">HH", 30000, 30000)
    with pytest.raises(InputError, match="30000x30000"):
        decode_image(bytes(data))


def test_webp_and_bmp_bombs_refused() -> None:
    vp8x = (b"RIFF" + struct.pack("<I", 22) + b"WEBP" + b"VP8X" + struct.pack("<I", 10)
            + b"\0" * 4 + (29999).to_bytes(3, "little") + (29999).to_bytes(3, "little"))
    with pytest.raises(InputError, match="30000x30000"):
        decode_image(vp8x)
    bmp = b"BM" + struct.pack("<I", 54) + b"\0" * 8 + struct.pack("<Iii", 40, 30000, -30000)
    with pytest.raises(InputError, match="30000x30000"):
        decode_image(bmp + b"\0" * 28)


def test_byte_cap() -> None:
    _, buf = cv2.imencode(".png", _img(100, 100))
    with pytest.raises(InputError, match="bytes"):
        decode_image(buf.tobytes(), ImageLimits(max_bytes=100))


def test_arrays_are_normalised() -> None:
    gray = np.zeros((10, 20), np.uint8)
    assert as_bgr(gray).shape == (10, 20, 3)
    with pytest.raises(InputError):
        as_bgr(np.zeros((10, 20, 3), np.float32))


@pytest.mark.parametrize("shape", [(480, 640), (640, 480), (100, 1000), (320, 320), (31, 7)])
def test_letterbox_round_trip(shape: tuple[int, int]) -> None:
    h, w = shape
    img = np.full((h, w, 3), 255, np.uint8)
    boxed, lb = letterbox(img, (320, 320))
    assert boxed.shape == (320, 320, 3)
    # the original image occupies exactly the unpadded area
    ys, xs = np.nonzero(boxed[:, :, 0] == 255)
    assert abs(xs.min() - lb.pad_x) <= 1 and abs(ys.min() - lb.pad_y) <= 1
    assert abs((xs.max() + 1 - lb.pad_x) / lb.scale - w) <= 1 / lb.scale + 1e-3
    boxes = np.array([[0, 0, w, h], [w * 0.25, h * 0.5, w * 0.75, h * 0.9]], np.float32)
    back = lb.to_original(lb.to_input(boxes))
    np.testing.assert_allclose(back, boxes, atol=1e-3)
    # boxes outside the image are clipped to it
    clipped = lb.to_original(np.array([[-50, -50, 400, 400]], np.float32))
    np.testing.assert_allclose(clipped, [[0, 0, w, h]])


def test_corrupt_png_and_gif_rejected() -> None:
    png = bytearray(cv2.imencode(".png", _img(100, 120))[1].tobytes())
    i = png.find(b"IDAT")
    png[i + 100:i + 200] = b"\x00" * 100
    with pytest.raises(InputError, match="could not decode"):
        decode_image(bytes(png))
    with pytest.raises(InputError, match="not a supported image"):
        decode_image(b"GIF89a" + b"\0" * 100)


@pytest.mark.parametrize("variant", ["gray", "16bit", "rgba", "progressive"])
def test_unusual_but_valid_images_become_bgr_uint8(variant: str) -> None:
    img = _img(40, 50)
    if variant == "gray":
        data = cv2.imencode(".jpg", img[:, :, 0])[1]
    elif variant == "16bit":
        data = cv2.imencode(".png", img.astype(np.uint16) * 257)[1]
    elif variant == "rgba":
        data = cv2.imencode(".png", np.dstack([img, img[:, :, 0]]))[1]
    else:
        data = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1]
    out = decode_image(data.tobytes())
    assert out.shape == (40, 50, 3) and out.dtype == np.uint8

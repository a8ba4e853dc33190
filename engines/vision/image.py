"""Safe image decoding and geometry helpers (pure: bytes and arrays in, arrays out).

Dimensions are read from the PNG/JPEG/WebP/BMP header *before* decoding, so a small
file that claims 30000x30000 pixels (a decompression bomb) is refused without
allocating anything.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import cv2
import numpy as np

from engines.errors import InputError

PNG_SIG = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers that carry the frame size (not DHT C4, JPG C8, DAC CC).
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


@dataclass(frozen=True)
class ImageLimits:
    """Caps applied to every uploaded image."""

    max_bytes: int = 20 << 20
    max_pixels: int = 40_000_000
    max_side: int = 16384


@dataclass(frozen=True)
class ImageHeader:
    format: str  # "png" | "jpeg" | "webp" | "bmp"
    width: int
    height: int


def _png(data: bytes) -> ImageHeader:
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise InputError("truncated PNG: no IHDR header")
    w, h = struct.unpack(">II", data[16:24])
    if data.rfind(b"IEND", max(0, len(data) - 64)) < 0:
        raise InputError("truncated PNG: the file ends before its IEND chunk")
    return ImageHeader("png", w, h)


def _jpeg(data: bytes) -> ImageHeader:
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            raise InputError(f"corrupt JPEG: expected a marker at byte {i}")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # standalone markers
            i += 2
            continue
        if marker in (0xD9, 0xDA):
            break  # end of image / start of scan before any frame header
        (length,) = struct.unpack(">H", data[i + 2:i + 4])
        if length < 2:
            raise InputError("corrupt JPEG: bad segment length")
        if marker in _SOF:
            if i + 9 > n:
                break
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            if data.find(b"\xff\xd9", i) < 0:  # after the frame: skips EXIF thumbnails
                raise InputError("truncated JPEG: no end-of-image marker")
            return ImageHeader("jpeg", w, h)
        i += 2 + length
    raise InputError("truncated or corrupt JPEG: no frame header found")


def _webp(data: bytes) -> ImageHeader:
    if len(data) < 30:
        raise InputError("truncated WebP header")
    (riff_size,) = struct.unpack("<I", data[4:8])
    if riff_size + 8 > len(data):
        raise InputError(f"truncated WebP: header says {riff_size + 8} bytes, got {len(data)}")
    chunk = data[12:16]
    if chunk == b"VP8 ":
        if data[23:26] != b"\x9d\x01\x2a":
            raise InputError("corrupt WebP (VP8 start code missing)")
        w, h = struct.unpack("<HH", data[26:30])
        return ImageHeader("webp", w & 0x3FFF, h & 0x3FFF)
    if chunk == b"VP8L":
        if data[20] != 0x2F:
            raise InputError("corrupt WebP (VP8L signature missing)")
        (bits,) = struct.unpack("<I", data[21:25])
        return ImageHeader("webp", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if chunk == b"VP8X":
        w = int.from_bytes(data[24:27], "little") + 1
        h = int.from_bytes(data[27:30], "little") + 1
        return ImageHeader("webp", w, h)
    raise InputError(f"unsupported WebP chunk {chunk!r}")


def _bmp(data: bytes) -> ImageHeader:
    if len(data) < 26:
        raise InputError("truncated BMP header")
    (file_size,) = struct.unpack("<I", data[2:6])
    (dib,) = struct.unpack("<I", data[14:18])
    if dib == 12:
        w, h = struct.unpack("<hh", data[18:22])
    else:
        w, h = struct.unpack("<ii", data[18:26])
    if file_size > len(data):
        raise InputError(f"truncated BMP: header says {file_size} bytes, got {len(data)}")
    return ImageHeader("bmp", abs(w), abs(h))


def read_header(data: bytes) -> ImageHeader:
    """Format and size from the header alone; InputError if not a supported image."""
    if data.startswith(PNG_SIG):
        return _png(data)
    if data.startswith(b"\xff\xd8\xff"):
        return _jpeg(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp(data)
    if data[:2] == b"BM":
        return _bmp(data)
    raise InputError("not a supported image: expected JPEG, PNG, WebP or BMP data")


def check_header(header: ImageHeader, limits: ImageLimits) -> None:
    """Refuse empty or oversized dimensions before anything is allocated."""
    w, h = header.width, header.height
    if w <= 0 or h <= 0:
        raise InputError(f"{header.format.upper()} header has an empty size {w}x{h}")
    if w > limits.max_side or h > limits.max_side or w * h > limits.max_pixels:
        raise InputError(
            f"image is {w}x{h} pixels ({w * h / 1e6:.1f} MP); the limit is "
            f"{limits.max_pixels / 1e6:.0f} MP and {limits.max_side} px per side")


def decode_image(data: bytes, limits: ImageLimits | None = None) -> np.ndarray:
    """Decode ``data`` into a BGR uint8 array (h, w, 3), EXIF orientation applied.

    Raises InputError for empty, oversized (bytes or pixels), non-image, truncated or
    corrupt data.
    """
    limits = limits or ImageLimits()
    if not data:
        raise InputError("the image is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise InputError(f"image is {len(data)} bytes; the limit is {limits.max_bytes} bytes")
    header = read_header(bytes(data))
    check_header(header, limits)
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise InputError(f"could not decode the {header.format.upper()} image "
                         "(corrupt or truncated data)")
    if {img.shape[0], img.shape[1]} != {header.height, header.width}:
        raise InputError(f"decoded size {img.shape[1]}x{img.shape[0]} does not match the "
                         f"header's {header.width}x{header.height}")
    return img


def as_bgr(image: bytes | np.ndarray, limits: ImageLimits | None = None) -> np.ndarray:
    """Bytes are decoded; arrays are checked and converted to 3-channel BGR uint8."""
    if isinstance(image, bytes | bytearray | memoryview):
        return decode_image(bytes(image), limits)
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise InputError("image array must be uint8")
    limits = limits or ImageLimits()
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    elif image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"image array must be (h, w, 3); got {image.shape}")
    check_header(ImageHeader("array", image.shape[1], image.shape[0]), limits)
    return image


# --- geometry -------------------------------------------------------------------------
@dataclass(frozen=True)
class Letterbox:
    """How an image was fitted into the model input: ``x_in = x * scale + pad_x``."""

    scale: float
    pad_x: float
    pad_y: float
    width: int  # original size
    height: int

    def to_original(self, xyxy: np.ndarray) -> np.ndarray:
        """Map (n, 4) boxes from model-input pixels to original pixels, clipped."""
        out = np.asarray(xyxy, np.float32).copy()
        out[:, [0, 2]] = (out[:, [0, 2]] - self.pad_x) / self.scale
        out[:, [1, 3]] = (out[:, [1, 3]] - self.pad_y) / self.scale
        out[:, [0, 2]] = out[:, [0, 2]].clip(0, self.width)
        out[:, [1, 3]] = out[:, [1, 3]].clip(0, self.height)
        return out

    def to_input(self, xyxy: np.ndarray) -> np.ndarray:
        """Map (n, 4) boxes from original pixels to model-input pixels."""
        out = np.asarray(xyxy, np.float32).copy()
        out[:, [0, 2]] = out[:, [0, 2]] * self.scale + self.pad_x
        out[:, [1, 3]] = out[:, [1, 3]] * self.scale + self.pad_y
        return out


def letterbox(img: np.ndarray, size: tuple[int, int], color: int = 114
              ) -> tuple[np.ndarray, Letterbox]:
    """Resize keeping aspect ratio to fit ``size`` (h, w) and pad the rest evenly."""
    h, w = img.shape[:2]
    th, tw = size
    scale = min(th / h, tw / w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    resized = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR) if (nw, nh) != (w, h) \
        else img
    left, top = (tw - nw) // 2, (th - nh) // 2
    out = cv2.copyMakeBorder(resized, top, th - nh - top, left, tw - nw - left,
                             cv2.BORDER_CONSTANT, value=(color, color, color))
    return out, Letterbox(scale, float(left), float(top), w, h)


def to_chw(img: np.ndarray, mean: float = 0.0, std: float = 1.0, rgb: bool = False
           ) -> np.ndarray:
    """uint8 HWC -> float32 CHW of ``(img / 255 - mean) / std`` (BGR unless ``rgb``)."""
    if rgb:
        img = img[:, :, ::-1]
    x = img.astype(np.float32) * (1.0 / 255.0)
    if mean or std != 1.0:
        x = (x - mean) / std
    return np.ascontiguousarray(x.transpose(2, 0, 1))

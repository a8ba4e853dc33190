"""Images of chat content parts: data URLs in, checked image bytes out (pure).

Only ``data:`` URLs are read (``data:image/png;base64,...``; JPEG, PNG or WebP): the box has
no internet access, so a remote ``http(s)://`` URL is refused with a message saying how to
send the image instead. The bytes are checked here as far as is cheap (base64, size, the
format's header and the pixel count from it, under the vision endpoints' limits); the
engine's worker decodes them (``engines.llm.multimodal``), never the API process.
"""

from __future__ import annotations

import base64
import binascii
import re

from engines.errors import InputError
from engines.vision.image import ImageLimits, check_header, read_header

#: The image limits of chat requests: the vision endpoints' own.
LIMITS = ImageLimits()
#: Longest data URL accepted: the largest image in base64, plus its header.
MAX_DATA_URL = (LIMITS.max_bytes + 2) // 3 * 4 + 256
MEDIA_TYPES = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg",
               "image/webp": "webp"}
_DATA_URL = re.compile(r"data:([^,;]*)((?:;[^,;]*)*),", re.IGNORECASE)
_SPACE = re.compile(rb"\s+")
REMOTE = ("image URLs are not fetched: this box has no internet access. Send the image "
          "inline as a data URL, e.g. 'data:image/png;base64,<base64 of the file>'")


def image_from_url(url: str) -> bytes:
    """The image a content part's URL carries; ValueError saying what to fix."""
    head = url[:16].lower()
    if head.startswith(("http://", "https://")):
        raise ValueError(f"remote {REMOTE}")
    match = _DATA_URL.match(url)
    if match is None:
        scheme = url.split(":", 1)[0][:20] if ":" in url else ""
        raise ValueError("image_url.url must be a data URL ('data:image/png;base64,...')"
                         + (f", not a {scheme!r} URL" if scheme else ""))
    media = match.group(1).strip().lower()
    params = [p.strip().lower() for p in match.group(2).split(";") if p.strip()]
    if media not in MEDIA_TYPES:
        raise ValueError(f"the data URL holds {media or 'text/plain'!r}; an image must be "
                         f"one of {', '.join(sorted(MEDIA_TYPES))}")
    if "base64" not in params:
        raise ValueError("the image data URL must be base64-encoded ('data:image/png;"
                         "base64,...')")
    try:
        data = base64.b64decode(_SPACE.sub(b"", url[match.end():].encode("ascii")),
                                validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise ValueError("the image data URL is not valid base64") from None
    return check_image(data)


def check_image(data: bytes) -> bytes:
    """``data`` when it is a JPEG, PNG or WebP image within the limits; ValueError if not."""
    if not data:
        raise ValueError("the image is empty (0 bytes)")
    if len(data) > LIMITS.max_bytes:
        raise ValueError(f"the image is {len(data)} bytes; the limit is {LIMITS.max_bytes}")
    try:
        header = read_header(data)
        if header.format not in ("png", "jpeg", "webp"):
            raise InputError(f"{header.format.upper()} images are not read here; send JPEG, "
                             "PNG or WebP")
        check_header(header, LIMITS)
    except InputError as exc:
        raise ValueError(f"the image cannot be read: {exc}") from None
    return data  # a JPEG labelled image/png (clients do that) is read as what it is

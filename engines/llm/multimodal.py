"""Images into a llama.cpp context through libmtmd: the projector of a vision-language model.

The only importer of ``llama_cpp.mtmd_cpp``. Images arrive as encoded bytes; they are
decoded here (``engines.vision.image.decode_image``: header checked against the size and
pixel limits before anything is allocated), turned into RGB bitmaps, split by libmtmd
into the model's image chunks (its own wrapper tokens, tiles and image embeddings) and
evaluated into one sequence of a context. Not thread-safe: the scheduler thread alone
uses a ``Projector`` after loading.
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from engines.errors import EngineError, InputError, InvalidRequestError, ModelLoadError
from engines.llm.lowlevel import Context, Model, route_native_log
from engines.vision.image import ImageLimits, decode_image

log = logging.getLogger(__name__)

#: The image limits of chat requests: the vision endpoints' own (engines.vision.image).
IMAGE_LIMITS = ImageLimits()


@dataclass
class ImageChunks:
    """One image made ready for the model: libmtmd's chunks and the positions they take."""

    ptr: int
    n_pos: int


class Projector:
    """A loaded multimodal projector (``mmproj`` GGUF) bound to ``model``."""

    def __init__(self, path: Path, model: Model, *, n_threads: int, use_gpu: bool) -> None:
        from llama_cpp import mtmd_cpp as mtmd

        self._mtmd = mtmd
        route_native_log(mtmd.mtmd_log_set, mtmd.mtmd_helper_log_set)
        if not Path(path).is_file():
            raise ModelLoadError(f"projector file not found: {path}")
        params = mtmd.mtmd_context_params_default()
        params.use_gpu = use_gpu
        params.n_threads = n_threads
        params.print_timings = False
        params.warmup = False
        ptr = mtmd.mtmd_init_from_file(str(path).encode(), model.ptr, params)
        if not ptr:
            raise ModelLoadError(f"libmtmd could not load the projector {Path(path).name} "
                                 f"for {model.path.name} (wrong model, or a projector type "
                                 "this llama.cpp does not know)")
        self.ptr = ptr
        if not mtmd.mtmd_support_vision(ptr):
            self.close()
            raise ModelLoadError(f"{Path(path).name} has no vision encoder")
        if mtmd.mtmd_decode_use_mrope(ptr):
            # M-RoPE models (Qwen2-VL family) need 4 positions per text token as well;
            # the scheduler decodes text with one.
            self.close()
            raise ModelLoadError(f"{Path(path).name} needs M-RoPE positions, which this box "
                                 "does not decode yet")
        self.marker = mtmd.mtmd_default_marker()
        self.path = Path(path)

    def prepare(self, data: bytes) -> ImageChunks:
        """Decode ``data`` (JPEG, PNG or WebP) and split it into the model's chunks.

        Raises InputError for data that is not a supported image, is corrupt, or exceeds
        the size limits; InvalidRequestError when libmtmd refuses the image."""
        if not data.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")) and not (
                data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
            raise InputError("an image must be JPEG, PNG or WebP data")
        bgr = decode_image(data, IMAGE_LIMITS)
        rgb = np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        h, w = rgb.shape[:2]
        m = self._mtmd
        bitmap = m.mtmd_bitmap_init(w, h, rgb.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)))
        if not bitmap:
            raise EngineError("libmtmd could not take the image")
        chunks = m.mtmd_input_chunks_init()
        try:
            text = m.mtmd_input_text(self.marker, len(self.marker), False, True)
            bitmaps = (m.mtmd_bitmap_p_ctypes * 1)(bitmap)
            rc = m.mtmd_tokenize(self.ptr, chunks, ctypes.byref(text), bitmaps, 1)
        finally:
            m.mtmd_bitmap_free(bitmap)
        if rc != 0:
            m.mtmd_input_chunks_free(chunks)
            raise InvalidRequestError(f"the model's projector refused the {w}x{h} image "
                                      f"(libmtmd code {rc})")
        return ImageChunks(chunks, int(m.mtmd_helper_get_n_pos(chunks)))

    def evaluate(self, ctx: Context, image: ImageChunks, n_past: int, seq_id: int) -> int:
        """Encode the image and decode its embeddings (with the model's wrapper tokens)
        into ``seq_id`` from position ``n_past``; return the position after it."""
        new_n_past = ctypes.c_int32(0)
        rc = self._mtmd.mtmd_helper_eval_chunks(self.ptr, ctx.ptr, image.ptr, n_past, seq_id,
                                                ctx.n_batch, False, ctypes.byref(new_n_past))
        if rc != 0:
            raise EngineError(f"evaluating an image failed (libmtmd code {rc})")
        return int(new_n_past.value)

    def release(self, image: ImageChunks) -> None:
        if image.ptr:
            self._mtmd.mtmd_input_chunks_free(image.ptr)
            image.ptr = 0

    def close(self) -> None:
        if self.ptr:
            self._mtmd.mtmd_free(self.ptr)
            self.ptr = None

"""Build and cache TensorRT engines through onnxruntime's TensorRT execution provider.

An engine is only valid for the exact GPU model, compute capability, TensorRT and
onnxruntime versions it was built with, so engines live in
``<cache_root>/<gpu>-sm<cc>-trt<version>-ort<version>/`` (``engine_cache_dir``); the
sessions of the running engines use the same folder (providers.provider_options), so an
engine built ahead of time by ``build_trt_engine`` is found at serve time. ORT names
each engine by the model's hash and profile; ``<model sha256[:16]>-<precision>.json``
beside it records our build (precision, shapes, seconds). FP16 is on by
default; INT8 is used when the model is a calibrated QDQ model (see quantize.py).
On a box without a usable GPU, TensorRT or TensorRT-enabled onnxruntime, every entry
point raises ProviderUnavailableError saying which piece is missing.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from engines.errors import ProviderUnavailableError
from engines.vision.providers import CPU, TRT
from storage.files import write_json_atomic

log = logging.getLogger(__name__)
Shape = tuple[int, ...]
TRT_DISTS = ("tensorrt", "tensorrt-cu12", "tensorrt-cu12-libs", "tensorrt-libs")


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str
    driver: str


@dataclass(frozen=True)
class TrtBuild:
    """A built (or found) engine cache."""

    cache_dir: Path
    key: str
    precision: str  # "fp16", "fp32" or "int8"
    gpu: str
    compute_capability: str
    tensorrt: str
    onnxruntime: str
    seconds: float  # build time; 0 when the cache was already there
    cached: bool


def gpu_info(device_id: int = 0) -> GpuInfo:
    """Name, compute capability and driver of GPU ``device_id`` (via nvidia-smi)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        raise ProviderUnavailableError("no NVIDIA GPU driver here (nvidia-smi not found); "
                                       "TensorRT engines need an NVIDIA GPU")
    proc = subprocess.run([exe, f"--id={device_id}", "--format=csv,noheader",
                           "--query-gpu=name,compute_cap,driver_version"],
                          capture_output=True, text=True, timeout=20)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise ProviderUnavailableError(
            f"nvidia-smi cannot see GPU {device_id}: {(proc.stderr or proc.stdout).strip()}")
    name, cc, driver = (p.strip() for p in proc.stdout.strip().splitlines()[0].split(","))
    return GpuInfo(name, cc, driver)


def tensorrt_version() -> str:
    """Installed TensorRT version; ProviderUnavailableError when it is not installed."""
    for dist in TRT_DISTS:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    raise ProviderUnavailableError("TensorRT is not installed (pip install .[tensorrt])")


def cache_dir_name(gpu: GpuInfo, trt: str, ort_version: str) -> str:
    """Folder for engines of one GPU model / compute capability / TensorRT / ORT (pure)."""
    slug = "".join(c if c.isalnum() else "-" for c in gpu.name.lower()).strip("-")
    return f"{slug}-sm{gpu.compute_capability.replace('.', '')}-trt{trt}-ort{ort_version}"


def build_id(model_sha256: str, precision: str,
             shapes: Mapping[str, Sequence[Shape]] | None = None) -> str:
    """Name of one build's record inside the engine folder (pure)."""
    ident = json.dumps([model_sha256, precision, sorted((k, [list(s) for s in v])
                                                        for k, v in (shapes or {}).items())])
    return f"{model_sha256[:16]}-{precision}-{hashlib.sha256(ident.encode()).hexdigest()[:8]}"


def engine_cache_dir(cache_root: Path, device_id: int = 0) -> Path:
    """``cache_root/<gpu>-sm<cc>-trt<ver>-ort<ver>``; ProviderUnavailableError without a GPU
    or TensorRT."""
    import onnxruntime as ort

    return Path(cache_root) / cache_dir_name(gpu_info(device_id), tensorrt_version(),
                                             ort.__version__)


def is_qdq(model: Path) -> bool:
    """Whether the ONNX model carries QuantizeLinear/DequantizeLinear nodes (INT8)."""
    import onnx

    graph = onnx.load(str(model), load_external_data=False).graph
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph.node)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _profile(shapes: Mapping[str, Sequence[Shape]], which: int) -> str:
    return ",".join(f"{k}:{'x'.join(map(str, v[which]))}" for k, v in shapes.items())


def profile_options(shapes: Mapping[str, Sequence[Shape]]) -> dict[str, str]:
    """TensorRT EP optimisation-profile options for ``{input: (min, opt, max)}``."""
    return {"trt_profile_min_shapes": _profile(shapes, 0),
            "trt_profile_opt_shapes": _profile(shapes, 1),
            "trt_profile_max_shapes": _profile(shapes, 2)}


def build_trt_engine(model: Path, cache_root: Path, *, fp16: bool = True,
                     int8: bool | None = None,
                     shapes: Mapping[str, Sequence[Shape]] | None = None,
                     device_id: int = 0, workspace_bytes: int = 2 << 30,
                     available: Sequence[str] | None = None) -> TrtBuild:
    """Build (or reuse) the TensorRT engine for ``model`` under ``cache_root``.

    ``shapes`` gives dynamic inputs as ``{name: (min, opt, max)}``; the engine is built
    by one inference at the ``opt`` shape. ``int8`` defaults to "the model is QDQ".
    Raises ProviderUnavailableError when onnxruntime has no TensorRT EP, there is no
    NVIDIA GPU, TensorRT is missing, or the session silently fell back to another EP.
    """
    import onnxruntime as ort

    avail = list(available) if available is not None else ort.get_available_providers()
    if TRT not in avail:
        raise ProviderUnavailableError(
            f"this onnxruntime build has no TensorRT execution provider (available: "
            f"{', '.join(avail)}); install onnxruntime-gpu and TensorRT 10 on a GPU box")
    gpu = gpu_info(device_id)
    trt = tensorrt_version()
    int8 = is_qdq(model) if int8 is None else int8
    precision = "int8" if int8 else "fp16" if fp16 else "fp32"
    key = build_id(_sha256(model), precision, shapes)
    cache_dir = Path(cache_root) / cache_dir_name(gpu, trt, ort.__version__)
    meta_path = cache_dir / f"{key}.json"
    common = dict(key=key, precision=precision, gpu=gpu.name,
                  compute_capability=gpu.compute_capability, tensorrt=trt,
                  onnxruntime=ort.__version__)
    if meta_path.is_file() and any(cache_dir.glob("*.engine")):
        return TrtBuild(cache_dir=cache_dir, seconds=0.0, cached=True, **common)
    cache_dir.mkdir(parents=True, exist_ok=True)
    opts: dict[str, object] = {
        "device_id": device_id, "trt_fp16_enable": fp16, "trt_int8_enable": int8,
        "trt_max_workspace_size": workspace_bytes, "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache_dir), "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache_dir)}
    if shapes:
        opts.update(profile_options(shapes))
    started = time.perf_counter()
    sess = ort.InferenceSession(str(model), providers=[(TRT, opts), CPU])
    if sess.get_providers()[0] != TRT:
        raise ProviderUnavailableError(
            f"onnxruntime fell back to {sess.get_providers()[0]}: the TensorRT or CUDA "
            "libraries could not be loaded (check LD_LIBRARY_PATH and the driver)")
    feeds = {}
    for inp in sess.get_inputs():
        shape = (shapes or {}).get(inp.name, [None, [d if isinstance(d, int) else 1
                                                     for d in inp.shape]])[1]
        feeds[inp.name] = np.zeros(shape, np.float32)
    sess.run(None, feeds)  # builds the engine and writes it into the cache
    seconds = time.perf_counter() - started
    write_json_atomic(meta_path, {
        **common, "model": str(model), "seconds": seconds,
        "shapes": {k: [list(x) for x in v] for k, v in (shapes or {}).items()}})
    log.info("built TensorRT %s engine for %s in %.1fs (%s)", precision, model.name, seconds,
             key)
    return TrtBuild(cache_dir=cache_dir, seconds=seconds, cached=False, **common)


def build_pack_engines(manifest: Mapping[str, object], directory: Path, cache_root: Path,
                       *, max_batch: int = 1, fp16: bool = True, device_id: int = 0
                       ) -> list[TrtBuild]:
    """Build every ONNX file of a vision pack with the profiles its engine will use, into
    the folder its sessions will read (so serving starts without a build).

    For ``appliance models trt NAME``; ``cache_root`` must be VisionOptions.cache_dir.
    Raises ProviderUnavailableError like ``build_trt_engine``.
    """
    from engines.vision.base import _files, _input_size
    from engines.vision.detect import trt_shapes as yolo_shapes
    from engines.vision.ocr import trt_shapes as ocr_shapes

    files = {role: Path(directory) / p for role, p in _files(manifest).items()}
    if manifest.get("engine") == "yolo":
        plan = {role: yolo_shapes(_input_size(manifest.get("input_shape")), max_batch)
                for role in files}
    else:
        shapes = ocr_shapes(max_batch)
        plan = {role: shapes[role] for role in files if role in shapes}
    return [build_trt_engine(files[role], cache_root, fp16=fp16, shapes=s,
                             device_id=device_id) for role, s in plan.items()]


def describe(build: TrtBuild) -> dict[str, object]:
    """JSON-friendly view of a build (for the CLI)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(build).items()}

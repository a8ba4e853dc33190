"""Pick the fastest ONNX Runtime execution provider that really works here.

``open_session`` walks TensorRT -> CUDA -> CPU (or a given preference), creates a
session for each candidate and keeps the first whose ``session.get_providers()`` really
starts with it: onnxruntime-gpu silently falls back to CPU when CUDA or TensorRT
libraries are missing, so being listed by ``get_available_providers()`` proves nothing.
Every skipped provider is recorded with the reason.

A manifest's ``providers`` list is a strict override: each named provider must exist
in this onnxruntime build (else ProviderUnavailableError), and only those are tried.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnxruntime as ort

from engines.errors import ModelLoadError, ProviderUnavailableError
from engines.vision.base import VisionOptions

log = logging.getLogger(__name__)

TRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
DEFAULT_CHAIN = (TRT, CUDA, CPU)
ALIASES = {"tensorrt": TRT, "trt": TRT, "cuda": CUDA, "gpu": CUDA, "cpu": CPU}


def canonical(name: str) -> str:
    """``cuda`` -> ``CUDAExecutionProvider``; full names pass through."""
    return ALIASES.get(name.lower(), name)


@dataclass(frozen=True)
class ProviderPlan:
    """Providers to try in order, and why others were dropped before trying."""

    candidates: tuple[str, ...]
    skipped: tuple[str, ...]
    strict: bool


def plan(preference: Sequence[str] | None, override: Sequence[str] | None,
         available: Sequence[str]) -> ProviderPlan:
    """Decide which providers to try (pure).

    ``override`` (from the manifest) is strict: an unknown or absent provider raises
    ProviderUnavailableError naming what this build offers. ``preference`` (options) is
    lenient: absent providers are skipped with a reason and CPU is always the last resort.
    """
    avail = list(available)
    if override:
        wanted = [canonical(p) for p in override]
        missing = [p for p in wanted if p not in avail]
        if missing:
            raise ProviderUnavailableError(
                f"the model asks for {', '.join(missing)}, which this onnxruntime build does "
                f"not provide (available: {', '.join(avail)}); install onnxruntime-gpu "
                "(and TensorRT) or remove 'providers' from the manifest")
        return ProviderPlan(tuple(dict.fromkeys(wanted)), (), True)
    wanted = [canonical(p) for p in (preference or DEFAULT_CHAIN)]
    if CPU not in wanted:
        wanted.append(CPU)
    candidates, skipped = [], []
    for p in dict.fromkeys(wanted):
        if p in avail:
            candidates.append(p)
        else:
            skipped.append(f"{p}: not in this onnxruntime build (available: {', '.join(avail)})")
    return ProviderPlan(tuple(candidates), tuple(skipped), False)


Shapes = Mapping[str, Sequence[tuple[int, ...]]]  # input -> (min, opt, max)


def provider_options(provider: str, options: VisionOptions, model: Path | None = None,
                     trt_shapes: Shapes | None = None) -> dict[str, Any]:
    """ORT options for ``provider``: TensorRT engine cache, FP16/INT8, workspace and
    optimisation profile; CUDA device. For TensorRT the cache folder is keyed by GPU,
    TensorRT and ORT versions (tensorrt.engine_cache_dir), which raises
    ProviderUnavailableError when there is no GPU or TensorRT."""
    if provider == TRT:
        from engines.vision.tensorrt import engine_cache_dir, profile_options

        root = options.cache_dir or ((model.parent / ".trt-cache") if model else None)
        cache = engine_cache_dir(root, options.device_id) if root is not None else None
        opts: dict[str, Any] = {
            "device_id": options.device_id,
            "trt_fp16_enable": options.trt_fp16,
            "trt_int8_enable": options.trt_int8,
            "trt_max_workspace_size": options.trt_workspace_bytes,
        }
        if cache is not None:
            Path(cache).mkdir(parents=True, exist_ok=True)
            opts.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(cache),
                        trt_timing_cache_enable=True, trt_timing_cache_path=str(cache))
        if trt_shapes:
            opts.update(profile_options(trt_shapes))
        return opts
    if provider == CUDA:
        return {"device_id": options.device_id}
    return {}


@dataclass
class OpenedSession:
    session: ort.InferenceSession
    provider: str
    report: tuple[str, ...]


def solo_session(model: Path, options: VisionOptions, provider: str
                 ) -> ort.InferenceSession | None:
    """A CPU session using every core, for lone requests (None when not worth it)."""
    threads = options.solo_threads(provider)
    if not threads:
        return None
    return ort.InferenceSession(str(model), sess_options=session_options(options, threads),
                                providers=[CPU])


def session_options(options: VisionOptions, threads: int | None = None) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads or options.cpu_threads()
    so.log_severity_level = 3
    return so


def open_session(model: Path | bytes, options: VisionOptions,
                 override: Sequence[str] | None = None,
                 available: Sequence[str] | None = None,
                 trt_shapes: Shapes | None = None) -> OpenedSession:
    """Create a session on the first provider of the plan that really runs the model.

    Raises ProviderUnavailableError if nothing in a strict override works, and
    ModelLoadError if the model cannot be loaded at all (on CPU).
    """
    avail = list(available) if available is not None else ort.get_available_providers()
    p = plan(options.providers, override, avail)
    report = list(p.skipped)
    path = model if isinstance(model, Path) else None
    last_exc: Exception | None = None
    for prov in p.candidates:
        try:
            provs: list[Any] = [(prov, provider_options(prov, options, path, trt_shapes))]
            if prov != CPU:
                provs.append(CPU)
            sess = ort.InferenceSession(str(model) if path else model,
                                        sess_options=session_options(options), providers=provs)
        except Exception as exc:  # ORT raises plain RuntimeError/Fail
            last_exc = exc
            report.append(f"{prov}: not usable: {str(exc).strip()[:300]}")
            log.warning("provider %s failed for %s: %s", prov, path or "model", exc)
            continue
        used = sess.get_providers()[0]
        if used != prov:
            report.append(f"{prov}: listed but not usable (onnxruntime fell back to {used}; "
                          "check the CUDA/TensorRT libraries and the GPU driver)")
            continue
        if report:
            log.info("using %s for %s; skipped: %s", prov, path or "model", "; ".join(report))
        return OpenedSession(sess, prov, tuple(report))
    if p.strict:
        raise ProviderUnavailableError(
            f"none of the providers the model asks for works here: {'; '.join(report)}")
    raise ModelLoadError(f"could not load {path or 'model'}: {last_exc}")

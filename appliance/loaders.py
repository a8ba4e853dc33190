"""Build engines for model packs: the only place that picks engine implementations.

Every engine runs in a supervised worker process (``engines.worker``); the box's process
never loads llama.cpp or ONNX Runtime. ``on_event`` hears worker crashes, restarts and
fallbacks (the app audits and counts them).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from appliance import __version__
from appliance.modelstore import Manifest
from appliance.registry import Loader
from appliance.settings import Settings
from appliance.trust import TRUST_FILE, TrustFile
from engines.worker.proxies import WorkerLLMEngine, WorkerVisionEngine
from engines.worker.spec import LLAMA_CONFIGS, NICE_ENV, EngineSpec, vision_configs
from engines.worker.supervisor import EventHook, Supervisor

log = logging.getLogger(__name__)


def _identity(manifest: Manifest) -> str:
    files = ",".join(f"{f.path}:{f.sha256}" for f in manifest.files)
    return f"{manifest.name} [{files}] appliance {__version__}"


def _supervisor(settings: Settings, spec: EngineSpec, on_event: EventHook | None) -> Supervisor:
    return Supervisor(spec, trust=TrustFile(settings.data_dir / TRUST_FILE), on_event=on_event,
                      env={NICE_ENV: str(settings.worker_nice)},
                      ready_timeout=settings.worker_ready_timeout_s,
                      log_level=logging.getLevelName(settings.log_level.upper()))


def llm_spec(settings: Settings, manifest: Manifest, directory: Path,
             n_threads: int | None = None) -> EngineSpec:
    """The worker spec of a language model pack (also what a fleet replica builds)."""
    if manifest.purpose == "embeddings":
        return embedding_spec(settings, manifest, directory, n_threads)
    # Each slot (one request) gets llm_ctx tokens of its own KV cache.
    params = {
        "model_path": str(directory / manifest.file("weights").path),
        "n_ctx": settings.llm_ctx * settings.llm_slots, "slots": settings.llm_slots,
        "n_threads": n_threads or settings.llm_threads,
        "n_gpu_layers": None if settings.llm_gpu_layers < 0 else settings.llm_gpu_layers,
        "max_queue": settings.llm_max_queue,
        "prefix_cache_bytes": settings.prefix_cache_bytes,
        "prefix_reuse": settings.llm_prefix_reuse,
    }
    if manifest.has_projector:  # a vision-language model: its projector reads images
        params["projector_path"] = str(directory / manifest.file("projector").path)
    return EngineSpec("llm", manifest.name, params, _identity(manifest), LLAMA_CONFIGS)


def embedding_spec(settings: Settings, manifest: Manifest, directory: Path,
                   n_threads: int | None = None) -> EngineSpec:
    """An embedding model: an LLM worker with embeddings on and the pack's pooling."""
    params = {
        "embedding": True, "name": manifest.name,
        "model_path": str(directory / manifest.file("weights").path),
        "n_threads": n_threads or settings.llm_threads,
        "n_gpu_layers": None if settings.llm_gpu_layers < 0 else settings.llm_gpu_layers,
        "batch_tokens": settings.embed_batch_tokens,
        "pooling": str(manifest.extra.get("pooling", "mean")),
    }
    return EngineSpec("llm", manifest.name, params, _identity(manifest), LLAMA_CONFIGS)


def llm_loader(settings: Settings, on_event: EventHook | None = None) -> Loader:
    def load(manifest: Manifest, directory: Path) -> Any:
        spec = llm_spec(settings, manifest, directory)
        return WorkerLLMEngine(_supervisor(settings, spec, on_event))

    return load


def prompt_spec(settings: Settings, manifest: Manifest, directory: Path) -> EngineSpec:
    """A worker that holds only a chat model's vocabulary and template (a fleet head
    tokenises its requests with it; ``engines.llm.vocab``)."""
    params = {"vocab_only": True, "model_path": str(directory / manifest.file("weights").path),
              "n_ctx": settings.llm_ctx}
    return EngineSpec("llm", manifest.name, params, _identity(manifest) + " vocabulary",
                      LLAMA_CONFIGS[:1])


def prompt_worker(settings: Settings, manifest: Manifest, directory: Path
                  ) -> WorkerLLMEngine | None:
    """A started prompt worker for a chat model, or None (an embedding or vision-language
    model, or a worker that would not start: then replicas tokenise, as before)."""
    if manifest.purpose == "embeddings" or manifest.has_projector:
        return None
    try:
        return WorkerLLMEngine(_supervisor(settings, prompt_spec(settings, manifest, directory),
                                           None))
    except Exception as exc:
        log.warning("no prompt worker for %s (its replicas tokenise instead): %s",
                    manifest.name, exc)
        return None


def vision_spec(settings: Settings, manifest: Manifest, directory: Path,
                workers: int | None = None) -> EngineSpec:
    """The worker spec of a vision pack (also what a fleet replica builds). ``workers``:
    that many single-threaded session runs (a fleet replica's reserved cores); None: the
    engine's own choice from the cores it sees."""
    options: dict[str, Any] = {
        "max_batch": settings.vision_max_batch, "max_wait_ms": settings.vision_max_wait_ms,
        "max_queue": settings.vision_max_queue,
        "cache_dir": settings.data_dir / "cache" / "trt",
        "max_image_bytes": settings.max_image_bytes,
        "max_image_pixels": settings.max_image_pixels,
    }
    if workers is not None:
        options.update(workers=workers, intra_op_threads=1)
    data = manifest.to_json()
    override = data.get("providers")
    params = {"manifest": data, "directory": str(directory), "options": options}
    return EngineSpec("vision", manifest.name, params, _identity(manifest),
                      vision_configs(list(override) if override else None))


def vision_loader(settings: Settings, on_event: EventHook | None = None) -> Loader:
    def load(manifest: Manifest, directory: Path) -> Any:
        spec = vision_spec(settings, manifest, directory)
        return WorkerVisionEngine(_supervisor(settings, spec, on_event))

    return load


def loaders(settings: Settings, on_event: EventHook | None = None) -> dict[str, Loader]:
    vision = vision_loader(settings, on_event)
    return {"llama": llm_loader(settings, on_event), "ocr": vision, "yolo": vision,
            "onnx": vision}

"""`appliance doctor`: what this box has and what really works on it."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

import psutil

from appliance.modelstore import ModelStore
from appliance.settings import Settings


def gpu_info() -> list[str]:
    """GPU names from nvidia-smi, or an empty list."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run([exe, "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def llama_backend() -> dict[str, Any]:
    """Which llama.cpp backend and CPU variant the installed llama-cpp-python really has.

    Runs in the doctor's own process (loading the library decodes nothing)."""
    import llama_cpp

    gpu = bool(llama_cpp.llama_supports_gpu_offload())
    system = llama_cpp.llama_print_system_info().decode(errors="replace")
    features = compiled_features(system)
    return {"version": llama_cpp.__version__, "gpu_offload": gpu,
            "backend": "cuda/gpu" if gpu else "cpu", "cpu_variant": cpu_variant(features),
            "compiled_features": sorted(features)}


def compiled_features(system_info: str) -> set[str]:
    """Features llama.cpp was compiled with, from ``llama_print_system_info``
    (``"CPU : SSE3 = 1 | AVX = 1 | ..."``)."""
    out = set()
    for part in system_info.replace("\n", "|").split("|"):
        name, eq, value = part.rpartition("=")
        if eq and value.strip() == "1":
            out.add(name.split(":")[-1].strip())
    return out


def cpu_variant(features: set[str]) -> str:
    """The x86-64 level a llama.cpp build needs, named for the admin."""
    if any(f.startswith("AMX") for f in features):
        return "native: AVX-512 + AMX (runs only on CPUs with AMX, e.g. Sapphire Rapids)"
    if any(f.startswith("AVX512") for f in features):
        return "native: x86-64-v4 (AVX-512; runs only on CPUs with AVX-512)"
    if {"AVX2", "FMA", "F16C"} <= features:
        return "portable: x86-64-v3 (AVX2, FMA, F16C; any x86-64 CPU from 2013 on)"
    if "AVX" in features:
        return "x86-64 with AVX (no AVX2)"
    return "baseline (" + (", ".join(sorted(features)) or "no SIMD") + ")"


def engine_fallbacks(settings: Settings) -> Any:
    """Models the box runs in a safer configuration on this machine, and why."""
    from appliance.trust import TRUST_FILE, TrustFile

    records = TrustFile(settings.data_dir / TRUST_FILE).records()
    if not records:
        return "no model self-tested yet"
    return {r.get("model", "?"): {"config": r.get("config"),
                                  "fallback": r.get("fallback") or "none (fastest path)"}
            for r in records}


def onnx_providers() -> dict[str, Any]:
    """Compiled-in ONNX Runtime providers and the ones a session really gets."""
    import onnxruntime as ort

    info: dict[str, Any] = {"version": ort.__version__,
                            "compiled_in": ort.get_available_providers()}
    from engines.errors import EngineError
    from engines.vision.base import VisionOptions
    from engines.vision.providers import open_session

    try:
        opened = open_session(_tiny_onnx(), VisionOptions())
        info["working"] = opened.provider
        info["skipped"] = list(opened.report)
    except EngineError as exc:
        info["working"] = f"none: {exc}"
    return info


def _tiny_onnx() -> bytes:
    """A one-node ONNX model, enough to prove a provider really creates sessions."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


def report(settings: Settings) -> dict[str, Any]:
    data_dir = settings.data_dir
    probe = data_dir if data_dir.exists() else Path(".")
    store = ModelStore(settings.model_root)
    models = {}
    for name in store.names():
        try:
            problems = store.verify(name)
            models[name] = "ok" if not problems else "; ".join(problems)
        except Exception as exc:  # report, do not crash the doctor
            models[name] = f"error: {exc}"
    return {
        "cpu": {"model": platform.processor() or platform.machine(),
                "cores": os.cpu_count(), "load": os.getloadavg()},
        "memory": {"total_gb": round(psutil.virtual_memory().total / 2**30, 1),
                   "available_gb": round(psutil.virtual_memory().available / 2**30, 1)},
        "gpu": gpu_info() or "none found",
        "llama_cpp": llama_backend(),
        "engine_self_tests": engine_fallbacks(settings),
        "onnxruntime": onnx_providers(),
        "disk": {"data_dir": str(data_dir.resolve()),
                 "free_gb": round(shutil.disk_usage(probe).free / 2**30, 1)},
        "models": models or "store is empty: run `appliance models fetch-defaults`",
        "running_box": running_models(settings),
    }


def running_models(settings: Settings) -> Any:
    """Loaded models of a box answering on this host/port, with the provider each runs on."""
    import httpx

    key_file = settings.data_dir / "admin.key"
    if not key_file.is_file():
        return "no admin key in the data directory"
    url = f"http://127.0.0.1:{settings.port}/admin/models"
    try:
        r = httpx.get(url, timeout=10,
                      headers={"Authorization": f"Bearer {key_file.read_text().strip()}"})
    except httpx.HTTPError:
        return f"no box answering at {url}"
    if r.status_code != 200:
        return f"{url} answered {r.status_code}"
    return {m["name"]: {"provider": m.get("provider"), "skipped": m.get("provider_report", []),
                        "worker_pid": m.get("worker_pid"), "config": m.get("worker_config"),
                        "restarts": m.get("worker_restarts"),
                        "fallback": m.get("fallback") or "none"}
            for m in r.json() if m.get("state") == "loaded"} or "no model loaded"

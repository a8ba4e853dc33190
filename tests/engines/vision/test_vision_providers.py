"""Execution provider choice on a CPU-only box: real fallbacks, real errors."""

from __future__ import annotations

import shutil

import pytest
from vision_helpers import DETECTOR, load

from engines.errors import ProviderUnavailableError
from engines.vision.base import VisionOptions
from engines.vision.providers import CPU, CUDA, TRT, open_session, plan, provider_options

CPU_ONLY = ["AzureExecutionProvider", CPU]
GPU_BUILD = [TRT, CUDA, CPU]


def test_plan_default_chain_skips_missing_providers_with_reasons() -> None:
    p = plan(None, None, CPU_ONLY)
    assert p.candidates == (CPU,)
    assert len(p.skipped) == 2 and p.skipped[0].startswith(TRT)
    assert "not in this onnxruntime build" in p.skipped[1]
    assert plan(None, None, GPU_BUILD).candidates == (TRT, CUDA, CPU)
    assert plan(["cuda"], None, GPU_BUILD).candidates == (CUDA, CPU)  # CPU always last


def test_plan_strict_override() -> None:
    assert plan(None, ["cpu"], CPU_ONLY).candidates == (CPU,)
    with pytest.raises(ProviderUnavailableError, match="CUDAExecutionProvider"):
        plan(None, ["cuda"], CPU_ONLY)


def test_asking_for_cuda_falls_back_to_cpu_with_reason(model_store) -> None:
    path = model_store.file_path(DETECTOR)
    opened = open_session(path, VisionOptions(providers=("cuda", "cpu")))
    assert opened.provider == CPU == opened.session.get_providers()[0]
    assert any(r.startswith(CUDA) for r in opened.report)


def test_listed_but_unusable_provider_is_detected(model_store) -> None:
    """A GPU build lists CUDA even without a GPU; the session then silently runs on CPU.

    Here onnxruntime really creates the session with CUDA requested and falls back;
    open_session must notice from session.get_providers() and say so."""
    path = model_store.file_path(DETECTOR)
    opened = open_session(path, VisionOptions(), available=GPU_BUILD)
    assert opened.provider == CPU
    assert any("listed but not usable" in r for r in opened.report), opened.report


def test_manifest_override_of_absent_provider_is_a_clear_error(model_store) -> None:
    with pytest.raises(ProviderUnavailableError, match="TensorrtExecutionProvider"):
        load(model_store, DETECTOR, providers=["tensorrt"])
    engine = load(model_store, DETECTOR, providers=["cpu"])
    try:
        assert engine.provider == CPU and engine.provider_report == ()
    finally:
        engine.close()


def test_tensorrt_options(tmp_path) -> None:
    opts = provider_options(TRT, VisionOptions(trt_fp16=True, trt_workspace_bytes=1 << 30),
                            trt_shapes={"x": ((1, 3, 32, 32), (1, 3, 736, 736),
                                              (4, 3, 2000, 2000))})
    assert opts["trt_fp16_enable"] is True and opts["trt_max_workspace_size"] == 1 << 30
    assert opts["trt_profile_min_shapes"] == "x:1x3x32x32"
    assert opts["trt_profile_max_shapes"] == "x:4x3x2000x2000"
    if shutil.which("nvidia-smi") is None:  # the engine cache is keyed by the GPU model
        with pytest.raises(ProviderUnavailableError, match="NVIDIA GPU"):
            provider_options(TRT, VisionOptions(cache_dir=tmp_path / "trt"))

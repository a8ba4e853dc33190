"""TensorRT builds: clear refusals on a box without TensorRT/GPU; cache keys."""

from __future__ import annotations

import shutil

import pytest
from vision_helpers import DETECTOR

from engines.errors import ProviderUnavailableError
from engines.vision.providers import CPU, CUDA, TRT
from engines.vision.tensorrt import GpuInfo, build_trt_engine, cache_key, is_qdq


def test_onnxruntime_without_tensorrt_is_refused(model_store, tmp_path) -> None:
    with pytest.raises(ProviderUnavailableError, match="no TensorRT execution provider"):
        build_trt_engine(model_store.file_path(DETECTOR), tmp_path)
    assert not any(tmp_path.iterdir())  # nothing half-built left behind


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this box has a GPU")
def test_tensorrt_build_of_onnxruntime_without_gpu_is_refused(model_store, tmp_path) -> None:
    with pytest.raises(ProviderUnavailableError, match="NVIDIA GPU"):
        build_trt_engine(model_store.file_path(DETECTOR), tmp_path,
                         available=[TRT, CUDA, CPU])


def test_cache_key_changes_with_everything_an_engine_depends_on() -> None:
    h100 = GpuInfo("NVIDIA H100 80GB HBM3", "9.0", "550.54")
    base = cache_key("ab" * 32, h100, "10.3.0", "1.20.0", "fp16")
    assert base == cache_key("ab" * 32, GpuInfo(h100.name, "9.0", "555.0"), "10.3.0",
                             "1.20.0", "fp16")  # the driver alone does not matter
    assert base.startswith("nvidia-h100-80gb-hbm3-sm90-trt10.3.0-")
    others = {cache_key("cd" * 32, h100, "10.3.0", "1.20.0", "fp16"),
              cache_key("ab" * 32, GpuInfo("NVIDIA L4", "8.9", "550.54"), "10.3.0", "1.20.0",
                        "fp16"),
              cache_key("ab" * 32, h100, "10.4.0", "1.20.0", "fp16"),
              cache_key("ab" * 32, h100, "10.3.0", "1.21.0", "fp16"),
              cache_key("ab" * 32, h100, "10.3.0", "1.20.0", "int8"),
              cache_key("ab" * 32, h100, "10.3.0", "1.20.0", "fp16",
                        {"images": [(1, 3, 320, 320), (8, 3, 320, 320), (16, 3, 320, 320)]})}
    assert base not in others and len(others) == 6


def test_qdq_detection(model_store) -> None:
    assert not is_qdq(model_store.file_path(DETECTOR))

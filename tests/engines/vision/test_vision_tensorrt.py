"""TensorRT builds: clear refusals on a box without TensorRT/GPU; cache keys."""

from __future__ import annotations

import shutil

import pytest
from vision_helpers import DETECTOR, OCR

from engines.errors import ProviderUnavailableError
from engines.vision.base import VisionOptions
from engines.vision.providers import CPU, CUDA, TRT, open_session
from engines.vision.tensorrt import (
    GpuInfo,
    build_id,
    build_pack_engines,
    build_trt_engine,
    cache_dir_name,
    is_qdq,
)


def test_onnxruntime_without_tensorrt_is_refused(model_store, tmp_path) -> None:
    with pytest.raises(ProviderUnavailableError, match="no TensorRT execution provider"):
        build_trt_engine(model_store.file_path(DETECTOR), tmp_path)
    assert not any(tmp_path.iterdir())  # nothing half-built left behind


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this box has a GPU")
def test_tensorrt_build_of_onnxruntime_without_gpu_is_refused(model_store, tmp_path) -> None:
    with pytest.raises(ProviderUnavailableError, match="NVIDIA GPU"):
        build_trt_engine(model_store.file_path(DETECTOR), tmp_path,
                         available=[TRT, CUDA, CPU])


def test_engine_folder_and_build_ids_key_everything_an_engine_depends_on() -> None:
    h100 = GpuInfo("NVIDIA H100 80GB HBM3", "9.0", "550.54")
    base = cache_dir_name(h100, "10.3.0", "1.20.0")
    assert base == "nvidia-h100-80gb-hbm3-sm90-trt10.3.0-ort1.20.0"
    assert base == cache_dir_name(GpuInfo(h100.name, "9.0", "555.0"), "10.3.0", "1.20.0")
    assert len({base, cache_dir_name(GpuInfo("NVIDIA L4", "8.9", "550"), "10.3.0", "1.20.0"),
                cache_dir_name(h100, "10.4.0", "1.20.0"),
                cache_dir_name(h100, "10.3.0", "1.21.0")}) == 4
    one = build_id("ab" * 32, "fp16")
    assert one.startswith("abababababababab-fp16-") and one == build_id("ab" * 32, "fp16")
    assert len({one, build_id("cd" * 32, "fp16"), build_id("ab" * 32, "int8"),
                build_id("ab" * 32, "fp16", {"images": [(1, 3, 320, 320)] * 3})}) == 4


def test_tensorrt_candidate_without_gpu_is_skipped_with_reason(model_store) -> None:
    """A build listing TensorRT on a box without GPU: the chain records why and uses CPU."""
    opened = open_session(model_store.file_path(DETECTOR), VisionOptions(),
                          available=[TRT, CPU])
    assert opened.provider == CPU
    assert any(r.startswith(TRT) and "NVIDIA" in r for r in opened.report), opened.report


def test_qdq_detection(model_store) -> None:
    assert not is_qdq(model_store.file_path(DETECTOR))


def test_pack_build_is_refused_clearly_here(model_store, tmp_path) -> None:
    with pytest.raises(ProviderUnavailableError):
        build_pack_engines(model_store.manifest(OCR).to_json(), model_store.path(OCR), tmp_path)

"""Where replicas may run (``fleet.placement``): pure rules, no Ray."""

from __future__ import annotations

import pytest

from fleet.placement import (
    ReplicaResources,
    llm_resources,
    unplaceable,
    vision_resources,
    wants_gpu,
)

CPU_BOX = {"alive": True, "cpus": 4, "gpus": 0}
GPU_BOX = {"alive": True, "cpus": 8, "gpus": 1}


@pytest.mark.parametrize(("providers", "gpu"), [
    (None, False), ([], False), (["cpu"], False), (["CPUExecutionProvider"], False),
    (["tensorrt", "cuda", "cpu"], True), (["cuda"], True), (["TRT"], True),
    (["CUDAExecutionProvider", "CPUExecutionProvider"], True),
    (["TensorrtExecutionProvider"], True), ("cuda", False), ([7, None], False)])
def test_gpu_when_the_manifest_asks_for_tensorrt_or_cuda(providers, gpu) -> None:
    manifest = {"name": "m", "engine": "yolo"}
    if providers is not None:
        manifest["providers"] = providers
    assert wants_gpu(manifest) is gpu
    res = vision_resources(manifest, replica_cpus=2, gpu_share=0.5)
    assert res == (ReplicaResources(1.0, 0.5) if gpu else ReplicaResources(2.0))


def test_actor_options_ask_for_a_gpu_only_when_needed() -> None:
    assert vision_resources({"providers": ["cpu"]}, 3).actor_options() == {"num_cpus": 3}
    assert vision_resources({"providers": ["cuda"]}, 3).actor_options() == {
        "num_cpus": 1.0, "num_gpus": 1.0}
    assert llm_resources(2.5).actor_options() == {"num_cpus": 2.5}
    assert llm_resources(2.5).threads == 2
    assert llm_resources(0.5).threads == 1


@pytest.mark.parametrize("bad", [{"replica_cpus": 0}, {"replica_cpus": 1, "gpu_share": 0},
                                 {"replica_cpus": 1, "gpu_share": 1.5}])
def test_impossible_resources_are_refused(bad) -> None:
    with pytest.raises(ValueError):
        vision_resources({}, **bad)
    with pytest.raises(ValueError):
        llm_resources(0)


def test_a_gpu_model_needs_a_live_gpu_box() -> None:
    gpu = vision_resources({"providers": ["tensorrt"]}, 1)
    assert unplaceable(gpu, [CPU_BOX, GPU_BOX]) is None
    why = unplaceable(gpu, [CPU_BOX, {**GPU_BOX, "alive": False}])
    assert why is not None and "GPU" in why and "providers" in why
    assert unplaceable(vision_resources({"providers": ["cuda"]}, 1, 0.25),
                       [{"alive": True, "cpus": 1, "gpus": 0.5}]) is None


def test_a_cpu_model_needs_a_box_with_enough_cores() -> None:
    assert unplaceable(vision_resources({}, 4), [CPU_BOX]) is None
    why = unplaceable(vision_resources({}, 6), [CPU_BOX, {"alive": True, "cpus": 0}])
    assert why is not None and "6 cores" in why
    assert unplaceable(vision_resources({}, 6), [GPU_BOX]) is None
    assert unplaceable(llm_resources(1), []) is not None

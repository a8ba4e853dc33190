"""Where a model's replicas may run: the Ray resources one replica asks for (pure, no Ray).

A language model's replica reserves ``fleet_replica_cpus`` cores (llama.cpp runs that many
threads). A vision model's replica depends on what its manifest asks for: a ``providers``
list naming TensorRT or CUDA needs a GPU node, so the replica asks for ``gpu_share`` of a
GPU (Serve then places it only on a box that advertises GPUs, and Ray gives it that GPU
in ``CUDA_VISIBLE_DEVICES``) and one core for pre- and post-processing; any other vision
model (no override, or CPU only) is placed by cores and runs one single-threaded ONNX
Runtime session per reserved core, the box's measured best on CPU.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: Provider names (any case; short or ONNX Runtime's full names) that need a GPU.
GPU_PROVIDERS = frozenset({"tensorrt", "trt", "cuda", "gpu", "tensorrtexecutionprovider",
                           "cudaexecutionprovider"})


@dataclass(frozen=True)
class ReplicaResources:
    """What one replica reserves on the node Ray places it on."""

    num_cpus: float
    num_gpus: float = 0.0

    @property
    def threads(self) -> int:
        """Native threads (llama.cpp) or parallel session runs (ONNX Runtime) to use."""
        return max(1, int(self.num_cpus))

    def actor_options(self) -> dict[str, float]:
        """``ray_actor_options`` of the Serve deployment."""
        options = {"num_cpus": self.num_cpus}
        if self.num_gpus:
            options["num_gpus"] = self.num_gpus
        return options


def llm_resources(replica_cpus: float) -> ReplicaResources:
    """A language model's replica: its cores (GPU offload of GGUFs is not placed yet)."""
    if replica_cpus <= 0:
        raise ValueError("a replica needs some cores: fleet_replica_cpus must be > 0")
    return ReplicaResources(replica_cpus)


def wants_gpu(manifest: Mapping[str, Any]) -> bool:
    """True when the manifest's ``providers`` override names TensorRT or CUDA."""
    providers = manifest.get("providers")
    if not isinstance(providers, list | tuple):
        return False
    return any(isinstance(p, str) and p.lower() in GPU_PROVIDERS for p in providers)


def vision_resources(manifest: Mapping[str, Any], replica_cpus: float,
                     gpu_share: float = 1.0) -> ReplicaResources:
    """A vision model's replica: a share of a GPU when it asks for TensorRT/CUDA, else
    ``replica_cpus`` cores. ``gpu_share`` (0 < share <= 1) lets several replicas share a
    GPU; more than one GPU per replica is not something a vision model here can use."""
    if replica_cpus <= 0:
        raise ValueError("a replica needs some cores: fleet_replica_cpus must be > 0")
    if not 0 < gpu_share <= 1:
        raise ValueError("fleet_vision_gpus must be in (0, 1]")
    if wants_gpu(manifest):
        return ReplicaResources(1.0, gpu_share)
    return ReplicaResources(replica_cpus)


def unplaceable(resources: ReplicaResources, nodes: Sequence[Mapping[str, Any]]
                ) -> str | None:
    """Why no live node could ever hold one such replica (``FleetClient.nodes()`` rows),
    or None when one could. Serve would otherwise wait for such a node for ever."""
    alive = [n for n in nodes if n.get("alive")]
    if resources.num_gpus and not any(float(n.get("gpus") or 0) >= resources.num_gpus
                                      for n in alive):
        return (f"it needs {resources.num_gpus:g} GPU and no box of the fleet has one: join a "
                "box with a GPU, or remove TensorRT/CUDA from the manifest's 'providers'")
    if not any(float(n.get("cpus") or 0) >= resources.num_cpus
               and float(n.get("gpus") or 0) >= resources.num_gpus for n in alive):
        return (f"it needs {resources.num_cpus:g} cores on one box and no box of the fleet "
                "has that many (fleet_replica_cpus)")
    return None

"""How each model's Serve deployment is configured (no cluster: Serve only builds it)."""

from __future__ import annotations

from fleet.placement import ReplicaResources
from fleet.replica import LLM_REPLICA_ENV, LLMReplica, VisionReplica, deployment


def _deployment(replica: type):
    return deployment("m", min_replicas=1, max_replicas=2, target_ongoing_requests=2,
                      max_ongoing_requests=8, resources=ReplicaResources(1.0),
                      upscale_delay_s=1, downscale_delay_s=5, replica=replica)


def test_language_replicas_run_calls_on_their_own_loop_without_access_logs() -> None:
    dep = _deployment(LLMReplica)
    env = dep.ray_actor_options["runtime_env"]["env_vars"]
    assert env == LLM_REPLICA_ENV
    assert env["RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"] == "0"
    assert dep.ray_actor_options["num_cpus"] == 1.0
    assert dep.logging_config["enable_access_log"] is False


def test_vision_replicas_keep_serves_defaults() -> None:
    """Their calls block for a whole image: they stay off the replica's own loop."""
    dep = _deployment(VisionReplica)
    assert "runtime_env" not in dep.ray_actor_options
    assert dep.ray_actor_options["num_cpus"] == 1.0

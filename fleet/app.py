"""How the box's app runs as the fleet's ingress on the head: the ``/admin/fleet`` route,
the node header, the driver connection and the model loaders over Serve.

``appliance.app`` calls ``install`` from ``create_app`` and ``start`` from its lifespan,
and only when ``fleet_enabled`` is set; this module imports Ray only inside ``start``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
from fastapi import APIRouter, FastAPI, Request

from appliance.deps import AdminDep, GuardDep, RuntimeDep, SettingsDep
from appliance.modelstore import Manifest
from appliance.registry import Loader
from appliance.settings import Settings
from fleet import admission
from fleet.errors import FleetUnavailableError, JoinRefusedError

TOKEN_FILE = "join.token"
router = APIRouter(prefix="/admin", tags=["fleet"])
join_router = APIRouter(tags=["fleet"])


def box_name(settings: Settings) -> str:
    return settings.box_name


def head_address(settings: Settings) -> str:
    if not settings.fleet_address:
        raise FleetUnavailableError("fleet mode needs fleet_address (the head's IP)")
    return f"{settings.fleet_address}:{settings.fleet_port}"


def token_path(settings: Settings) -> Path:
    return settings.fleet_dir / TOKEN_FILE


@router.get("/fleet")
async def fleet_status(runtime: RuntimeDep, admin: AdminDep) -> dict[str, Any]:
    """Nodes, their health, the replicas on each and their load."""
    client = runtime.fleet
    if client is None:
        raise FleetUnavailableError("this box is not a fleet head")
    return await anyio.to_thread.run_sync(client.status)


@join_router.post(admission.JOIN_PATH)
async def fleet_join(request: Request, guard: GuardDep, settings: SettingsDep
                     ) -> dict[str, Any]:
    """A box asks to join (``appliance fleet join``): the join token as bearer, the body a
    join request signed by the box. 403 ``fleet_join_refused`` naming why not."""
    chunks, size = [], 0
    async for chunk in request.stream():  # a join request is small: stop reading early
        size += len(chunk)
        if size > admission.MAX_JOIN_BYTES:
            raise JoinRefusedError("the join request is too large")
        chunks.append(chunk)
    return await anyio.to_thread.run_sync(
        admission.admit, guard, token_path(settings),
        request.headers.get("authorization", ""), b"".join(chunks))


def install(app: FastAPI) -> None:
    """Routes of fleet mode (at app creation; nothing connects yet)."""
    app.include_router(router)
    app.include_router(join_router)


def start(settings: Settings) -> Any:
    """Connect this head's API process to its fleet (blocking: call from a thread)."""
    from fleet.cluster import FleetClient

    return FleetClient(head_address(settings), token_path(settings))


def llm_loader(settings: Settings, client: Any) -> Loader:
    """Load a language model as a Serve deployment whose replicas are engine workers."""
    from appliance.loaders import llm_spec, prompt_worker
    from fleet.cluster import app_name
    from fleet.engine import FleetLLMEngine
    from fleet.placement import llm_resources, unplaceable
    from fleet.replica import deployment

    def load(manifest: Manifest, directory: Path) -> Any:
        resources = llm_resources(settings.fleet_replica_cpus)
        why = unplaceable(resources, client.nodes())
        if why:
            raise FleetUnavailableError(f"model {manifest.name!r} cannot be placed: {why}")
        spec = llm_spec(settings, manifest, directory, n_threads=resources.threads)
        least = settings.fleet_min_for(manifest.name)
        dep = deployment(
            app_name(manifest.name), min_replicas=least,
            max_replicas=max(settings.fleet_max_replicas, least, 1),
            target_ongoing_requests=settings.fleet_target_ongoing,
            max_ongoing_requests=settings.llm_slots, resources=resources,
            upscale_delay_s=settings.fleet_upscale_delay_s,
            downscale_delay_s=settings.fleet_downscale_delay_s,
            look_back_s=settings.fleet_look_back_s)
        handle = client.deploy(manifest.name, dep, spec, settings.worker_ready_timeout_s,
                               str(settings.data_dir), settings.worker_nice)
        prompts = prompt_worker(settings, manifest, directory)
        try:
            engine = FleetLLMEngine(
                manifest.name, handle, on_close=lambda: client.undeploy(manifest.name),
                running=lambda: client.running(manifest.name), scales_to_zero=least == 0,
                start_timeout=settings.worker_ready_timeout_s, load=client.load,
                slots_per_replica=settings.llm_slots, prompts=prompts,
                stream_grpc=settings.fleet_stream_grpc)
        except BaseException:
            if prompts is not None:
                prompts.close()
            raise
        client.channels[manifest.name] = engine.stream_channel
        return engine

    return load


def vision_loader(settings: Settings, client: Any) -> Loader:
    """Load a vision model as a Serve deployment: on a GPU node when its manifest asks for
    TensorRT or CUDA, else by cores (``fleet.placement``)."""
    from appliance.loaders import vision_spec
    from engines.errors import ProviderUnavailableError
    from fleet.cluster import app_name
    from fleet.placement import unplaceable, vision_resources
    from fleet.replica import VisionReplica, deployment
    from fleet.vision import FleetVisionEngine

    def load(manifest: Manifest, directory: Path) -> Any:
        resources = vision_resources(manifest.to_json(), settings.fleet_replica_cpus,
                                     settings.fleet_vision_gpus)
        why = unplaceable(resources, client.nodes())
        if why:
            raise ProviderUnavailableError(f"model {manifest.name!r} cannot be placed: {why}")
        workers = None if resources.num_gpus else resources.threads
        spec = vision_spec(settings, manifest, directory, workers=workers)
        least = max(1, settings.fleet_min_for(manifest.name))  # no scale to zero for vision
        dep = deployment(
            app_name(manifest.name), min_replicas=least,
            max_replicas=max(settings.fleet_max_replicas, least),
            target_ongoing_requests=settings.fleet_target_ongoing,
            max_ongoing_requests=settings.vision_max_queue, resources=resources,
            upscale_delay_s=settings.fleet_upscale_delay_s,
            downscale_delay_s=settings.fleet_downscale_delay_s,
            look_back_s=settings.fleet_look_back_s, replica=VisionReplica)
        handle = client.deploy(manifest.name, dep, spec, settings.worker_ready_timeout_s,
                               str(settings.data_dir), settings.worker_nice)
        return FleetVisionEngine(manifest.name, handle,
                                 on_close=lambda: client.undeploy(manifest.name))

    return load


def loaders(settings: Settings, client: Any) -> dict[str, Loader]:
    """The engine loaders of fleet mode: every model a Serve deployment."""
    vision = vision_loader(settings, client)
    return {"llama": llm_loader(settings, client), "ocr": vision, "yolo": vision,
            "onnx": vision}

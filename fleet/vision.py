"""``FleetVisionEngine``: the ``VisionEngine`` contract over a Serve deployment handle.

In fleet mode the head's registry holds one for each vision model, in place of the
``WorkerVisionEngine`` a single box holds, so ``appliance/api/vision.py`` runs unchanged.
Replicas are placed by ``fleet.placement.vision_resources``: a model that asks for
TensorRT or CUDA lands on a GPU node, any other by cores. Each answer names the box that
served it (``X-Appliance-Node``, the usage row); a replica lost with its box answers
``engine_crashed`` (503, Retry-After) while Serve starts it again elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ray.serve.handle import DeploymentHandle

from engines.vision.base import ImageInput, VisionEngine
from engines.vision.types import Detections, OcrResult
from fleet.engine import CALL_TIMEOUT_S, call
from fleet.headers import note_placement


class FleetVisionEngine(VisionEngine):
    """A vision model served by the replicas of one Serve deployment."""

    def __init__(self, name: str, handle: DeploymentHandle, *,
                 on_close: Callable[[], None] | None = None,
                 call_timeout: float = CALL_TIMEOUT_S) -> None:
        super().__init__(name)
        self._handle = handle
        self._on_close = on_close
        self._timeout = call_timeout
        facts = self._call("describe")
        self.kind = str(facts["kind"])
        self._provider = str(facts["provider"])
        self._report = tuple(facts["provider_report"])
        self.last_box: str | None = None

    def _call(self, method: str, *args: Any) -> Any:
        return call(self._handle, self.name, method, self._timeout, *args)

    def _placed(self, answer: tuple[Any, Any]) -> Any:
        placement, result = answer
        self.last_box = placement.box
        note_placement(placement.box)
        return result

    def ocr(self, image: ImageInput) -> OcrResult:
        return self._placed(self._call("ocr", image))

    def detect(self, image: ImageInput, conf: float = 0.25, iou: float = 0.45) -> Detections:
        return self._placed(self._call("detect", image, conf, iou))

    @property
    def provider(self) -> str:
        """The provider the first replica reported (every replica of a model asks for the
        same resources, so they land on the same kind of node)."""
        return self._provider

    @property
    def provider_report(self) -> tuple[str, ...]:
        return self._report

    @property
    def memory_bytes(self) -> int:
        """The head holds no sessions; replicas' memory is their boxes' business."""
        return 1

    def stats(self) -> dict[str, float]:
        return {}  # per-replica gauges are in `fleet status`; /metrics counts the head

    def close(self) -> None:
        if self._on_close is not None:
            self._on_close()

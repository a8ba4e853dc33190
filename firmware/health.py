"""Health check after a switch: ``GET /readyz`` then one real inference, within a deadline."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from firmware.errors import HealthCheckError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"


def _default_body() -> dict[str, Any]:
    return {"model": DEFAULT_MODEL, "prompt": "ping", "max_tokens": 1}


@dataclass(frozen=True)
class HealthCheck:
    """Where and how to probe the service; ``inference_path=None`` skips the inference."""

    base_url: str = "http://127.0.0.1:8080"
    ready_path: str = "/readyz"
    inference_path: str | None = "/v1/completions"
    inference_body: dict[str, Any] = field(default_factory=_default_body)
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float = 120.0
    interval: float = 0.25

    def run(self, alive: Callable[[], bool] | None = None) -> None:
        """Wait for readiness, then POST the inference; raise HealthCheckError on failure.

        ``alive`` (e.g. ``ServiceManager.is_running``) lets a crashed service fail fast.
        """
        deadline = time.monotonic() + self.timeout
        last = "no answer"
        with httpx.Client(base_url=self.base_url, headers=self.headers,
                          timeout=max(1.0, min(30.0, self.timeout))) as client:
            while True:
                if alive is not None and not alive():
                    raise HealthCheckError(f"the service exited before it was ready ({last})")
                try:
                    r = client.get(self.ready_path)
                    if r.status_code == 200:
                        break
                    last = f"{self.ready_path} answered {r.status_code}"
                except httpx.HTTPError as exc:
                    last = f"{self.ready_path}: {type(exc).__name__}"
                if time.monotonic() >= deadline:
                    raise HealthCheckError(f"not ready within {self.timeout:g}s: {last}")
                time.sleep(self.interval)
            if self.inference_path is None:
                return
            try:
                r = client.post(self.inference_path, json=self.inference_body,
                                timeout=max(1.0, deadline - time.monotonic()))
            except httpx.HTTPError as exc:
                raise HealthCheckError(f"inference {self.inference_path} failed: "
                                       f"{type(exc).__name__}: {exc}") from exc
            if r.status_code != 200:
                raise HealthCheckError(f"inference {self.inference_path} answered "
                                       f"{r.status_code}: {r.text[:200]}")
        log.info("health check passed at %s", self.base_url)

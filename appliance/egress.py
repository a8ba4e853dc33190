"""Cloud overflow policy, pure: may a request leave the box, and should it, now?

A language-model request is sent to a remote OpenAI-compatible endpoint (``appliance fleet
add-remote``) only when all three hold:

1. **the seat allows it**: the seat's ``egress`` policy is ``"llm"`` (requests without
   images) or ``"llm+vision"`` (images in chat messages too); ``"none"``, the default,
   keeps every request of the seat on the box;
2. **a remote serves the model**: a registered remote lists the model (under the same
   name, or mapped to its own name), or lists none (then it serves every model under the
   box's names);
3. **the box is saturated** for that model: every decoding slot of its engine is busy
   and the request would wait in the engine's queue, i.e. ``active + waiting >= slots``
   (``Load``). On a fleet head the Serve-backed engine counts the model's slots across its
   running replicas and the generations in flight through the head (``fleet.load``); an
   engine that reports no slots (a model scaled to zero) is never saturated here.

Otherwise the request stays on the box, as it always did: it waits in the engine's queue,
or gets 503 ``queue_full`` with Retry-After once that queue is full.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def allows(policy: str, images: bool) -> bool:
    """Whether a seat with ``policy`` may send a request (``images``: it carries images)
    to a remote endpoint."""
    if policy == "llm+vision":
        return True
    return policy == "llm" and not images


@dataclass(frozen=True)
class Remote:
    """A registered remote endpoint (the key is never part of it)."""

    name: str
    url: str  # its OpenAI base URL, e.g. https://cloud.example/v1
    models: Mapping[str, str] = field(default_factory=dict)  # box name -> remote name
    added_at: float = 0.0

    def serves(self, model: str) -> bool:
        return not self.models or model in self.models

    def remote_model(self, model: str) -> str:
        """The name the remote knows ``model`` by."""
        return self.models.get(model, model)

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "url": self.url, "models": dict(self.models) or "*",
                "added_at": self.added_at}


def parse_models(spec: str | None) -> dict[str, str]:
    """``"a,b=cloud-b"`` -> ``{"a": "a", "b": "cloud-b"}``; empty or ``"*"``: every model
    under its own name (``{}``). ValueError naming a malformed entry."""
    if spec is None or spec.strip() in ("", "*"):
        return {}
    out: dict[str, str] = {}
    for item in spec.split(","):
        local, _, remote = item.strip().partition("=")
        local, remote = local.strip(), (remote.strip() or local.strip())
        if not local or not remote or len(local) > 200 or len(remote) > 200:
            raise ValueError(f"models: {item.strip()!r} is not NAME or NAME=REMOTE_NAME")
        out[local] = remote
    return out


@dataclass(frozen=True)
class Load:
    """How busy a local engine is: decoding slots, those busy, requests waiting."""

    slots: int
    active: int
    waiting: int

    @classmethod
    def from_stats(cls, stats: Mapping[str, float]) -> Load | None:
        """From an engine's ``stats()`` gauges; None when it reports no slots."""
        slots = int(stats.get("slots", 0) or 0)
        if slots <= 0:
            return None
        return cls(slots, int(stats.get("active_slots", 0) or 0),
                   int(stats.get("queue_depth", 0) or 0))

    @property
    def saturated(self) -> bool:
        """No slot is free for one more request: it would wait."""
        return self.active + self.waiting >= self.slots


def should_overflow(policy: str, images: bool, model: str, remotes: Iterable[Remote],
                    load: Load | None) -> Remote | None:
    """The remote a request for ``model`` goes to, or None to serve it on the box (see
    the module docstring); the first registered remote that serves the model wins."""
    if not allows(policy, images) or load is None or not load.saturated:
        return None
    return next((r for r in remotes if r.serves(model)), None)


def open_to(policy: str, model: str, remotes: Iterable[Remote]) -> list[str]:
    """Names of the remotes ``model`` may be sent to for a seat with ``policy`` (when the
    box is saturated); empty when it never leaves the box for that seat."""
    if not allows(policy, images=False):
        return []
    return [r.name for r in remotes if r.serves(model)]

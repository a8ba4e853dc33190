"""Say in the response which box served a request: ``X-Appliance-Node: <box>``.

``PlacementMiddleware`` opens a per-request note (a context variable holding the request's
ASGI ``state`` dict); an engine that learns where a request runs calls ``note_placement``,
and the box's ``ObserveMiddleware`` adds ``state["response_headers"]`` when the response
starts. Streams learn their box before their first byte, so the header is always in time.
Plain ASGI; no Ray.
"""

from __future__ import annotations

import contextvars
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

NODE_HEADER = "x-appliance-node"
_request_state: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "fleet_request_state", default=None)


class PlacementMiddleware:
    """Makes the request's ``state`` reachable from engines called while it is served."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = _request_state.set(scope.setdefault("state", {}))
        try:
            await self.app(scope, receive, send)
        finally:
            _request_state.reset(token)


def note_placement(box: str) -> None:
    """Record that the current request runs on ``box`` (no-op outside a request)."""
    state = _request_state.get()
    if state is None:
        return
    state["fleet_box"] = box
    headers = [h for h in state.get("response_headers", []) if h[0] != NODE_HEADER.encode()]
    headers.append((NODE_HEADER.encode(), box.encode("latin-1", "replace")))
    state["response_headers"] = headers

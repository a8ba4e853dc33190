"""ASGI middleware: request metrics, the request id and the body-size cap.

Pure ASGI (not BaseHTTPMiddleware) so streamed responses pass through untouched and the
request is counted when its last byte has been sent.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from appliance.api.errors import error_body
from appliance.metrics import Metrics

log = logging.getLogger(__name__)


_SAFE_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")


def _request_id(scope: Scope) -> bytes:
    """The client's ``X-Request-ID`` when it is a sane token, else a new one."""
    given = dict(scope.get("headers") or []).get(b"x-request-id", b"")
    return given if _SAFE_ID.match(given) else f"req_{uuid.uuid4().hex}".encode()


class ObserveMiddleware:
    """Counts, times and logs every HTTP request; refuses bodies over the cap with 413."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics, max_body: int, max_upload: int,
                 upload_prefix: str = "/admin/updates") -> None:
        self.app = app
        self.metrics = metrics
        self.max_body = max_body
        self.max_upload = max_upload
        self.upload_prefix = upload_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cap = (self.max_upload if scope["path"].startswith(self.upload_prefix)
               else self.max_body)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > cap:
            await _reject(send, 413, f"request body over {cap} bytes")
            return
        started = time.perf_counter()
        status = 500
        received = 0
        metrics = self.metrics
        metrics.in_flight.inc()

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > cap:
                    raise BodyTooLarge(cap)
            return message

        request_id = _request_id(scope)

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"x-request-id", request_id)]}
            await send(message)

        try:
            await self.app(scope, counted_receive, observed_send)
        except BodyTooLarge:
            status = 413
            await _reject(send, 413, f"request body over {cap} bytes")
        finally:
            metrics.in_flight.dec()
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            metrics.requests.labels(path, scope["method"], str(status)).inc()
            metrics.latency.labels(path).observe(elapsed)


class BodyTooLarge(HTTPException):
    """The body grew past the cap while being read (no or a lying Content-Length).

    An HTTPException, because FastAPI turns any other exception raised while it reads a
    JSON body into "400 There was an error parsing the body"; HTTPExceptions it re-raises,
    so the error handlers answer 413 with code ``body_too_large``.
    """

    code = "body_too_large"

    def __init__(self, cap: int) -> None:
        super().__init__(413, f"request body over {cap} bytes")


async def _reject(send: Send, status: int, message: str) -> None:
    import json

    body = json.dumps(error_body(message, "invalid_request_error", "body_too_large")).encode()
    try:
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
    except RuntimeError:
        pass  # response already started; nothing more to say

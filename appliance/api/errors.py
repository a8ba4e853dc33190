"""The one place where errors become HTTP responses (OpenAI error shape everywhere)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

import firmware.errors as fw
import fleet.errors as fl
import licensing.errors as lic
from appliance.errors import (
    ApplianceError,
    ClientGoneError,
    ConfigError,
    ModelNotFoundError,
    ModelStoreError,
    RemoteError,
    RemoteNotFoundError,
    RemoteUnavailableError,
    ResponseNotFoundError,
)
from engines.errors import (
    ContextLengthError,
    EngineClosedError,
    EngineCrashedError,
    EngineError,
    InputError,
    InvalidRequestError,
    ModelStartingError,
    OverloadedError,
    ProviderUnavailableError,
)

log = logging.getLogger(__name__)

# (status, OpenAI "type", "code") by error class; the first matching class wins.
ERROR_MAP: list[tuple[type[Exception], int, str, str | None]] = [
    (lic.Unauthenticated, 401, "invalid_request_error", "invalid_api_key"),
    (lic.NotEntitled, 403, "permission_error", "not_entitled"),
    (lic.LicenceExpired, 403, "permission_error", "licence_expired"),
    (lic.ClockTampered, 403, "permission_error", "clock_tampered"),
    (lic.LicenceMissing, 403, "permission_error", "licence_missing"),
    (lic.Forbidden, 403, "permission_error", "forbidden"),
    (lic.RateLimited, 429, "rate_limit_error", "rate_limit_exceeded"),
    (lic.SeatLimitReached, 409, "invalid_request_error", "seat_limit"),
    (lic.KeyLimitReached, 409, "invalid_request_error", "key_limit"),
    (lic.NotFound, 404, "invalid_request_error", "not_found"),
    (lic.StateError, 409, "invalid_request_error", "conflict"),
    (lic.LicenseError, 400, "invalid_request_error", "licence_invalid"),
    (fw.LockedError, 409, "invalid_request_error", "update_in_progress"),
    (fw.SlotError, 409, "invalid_request_error", "slot"),
    (fw.BundleError, 400, "invalid_request_error", "bundle_refused"),
    (fw.ApplyError, 500, "server_error", "update_failed"),
    (fw.UpdateError, 400, "invalid_request_error", "update"),
    (ModelNotFoundError, 404, "invalid_request_error", "model_not_found"),
    (ResponseNotFoundError, 404, "invalid_request_error", "response_not_found"),
    (RemoteNotFoundError, 404, "invalid_request_error", "remote_not_found"),
    (RemoteUnavailableError, 503, "server_error", "remote_unavailable"),
    (RemoteError, 502, "server_error", "remote_failed"),
    (ContextLengthError, 400, "invalid_request_error", "context_length_exceeded"),
    (InvalidRequestError, 400, "invalid_request_error", None),
    (InputError, 400, "invalid_request_error", "invalid_input"),
    (OverloadedError, 503, "server_overloaded", "queue_full"),
    (EngineClosedError, 503, "server_error", "model_unloaded"),
    (EngineCrashedError, 503, "server_error", "engine_crashed"),
    (ModelStartingError, 503, "server_error", "model_starting"),
    (ProviderUnavailableError, 503, "server_error", "provider_unavailable"),
    (fl.JoinRefusedError, 403, "permission_error", "fleet_join_refused"),
    (fl.FleetUnavailableError, 503, "server_error", "fleet_unavailable"),
    (fl.FleetError, 500, "server_error", "fleet"),
    (ModelStoreError, 409, "invalid_request_error", "model_store"),
    (ConfigError, 500, "server_error", "config"),
    (ClientGoneError, 499, "invalid_request_error", "client_closed_request"),
    (EngineError, 500, "server_error", None),
    (ApplianceError, 400, "invalid_request_error", None),
]


def error_body(message: str, type_: str, code: str | None = None,
               param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(status: int, message: str, type_: str, code: str | None = None,
                   param: str | None = None, headers: dict[str, str] | None = None
                   ) -> JSONResponse:
    return JSONResponse(error_body(message, type_, code, param), status_code=status,
                        headers=headers)


Mapping = list[tuple[type[Exception], int, str, str | None]]


def _match(exc: Exception, table: Mapping) -> tuple[int, str, str | None] | None:
    """(status, OpenAI type, code) of the first class in ``table`` that ``exc`` is."""
    for cls, status, type_, code in table:
        if isinstance(exc, cls):
            return status, type_, code
    return None


def mapped(exc: Exception) -> tuple[int, dict[str, Any]] | None:
    """(status, OpenAI error body) for a known error, e.g. to end a stream already begun."""
    hit = _match(exc, ERROR_MAP)
    return None if hit is None else (hit[0], error_body(str(exc), hit[1], hit[2]))


def register(extra: Mapping | None = None):
    """Return a function installing the handlers on an app; ``extra`` adds mappings."""
    table = (extra or []) + ERROR_MAP

    def install(app: FastAPI) -> None:
        async def known(request: Request, exc: Exception) -> JSONResponse:
            hit = _match(exc, table)
            if hit is None:
                raise exc
            status, type_, code = hit
            headers = {}
            retry = getattr(exc, "retry_after", None)
            if retry is not None:
                headers["Retry-After"] = str(max(1, round(retry)))
            if status >= 500:
                log.error("%s on %s: %s", type(exc).__name__, request.url.path, exc)
            return error_response(status, str(exc), type_, code, headers=headers)

        for cls, *_ in table:
            app.add_exception_handler(cls, known)

        async def validation(request: Request, exc: RequestValidationError) -> JSONResponse:
            problems = []
            param = None
            for e in exc.errors():
                loc = [str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path")]
                param = param or (".".join(loc) or None)
                problems.append(f"{'.'.join(loc) or 'body'}: {e.get('msg')}")
            return error_response(400, "Invalid request: " + "; ".join(problems),
                                  "invalid_request_error", "invalid_request", param)

        async def unicode(request: Request, exc: UnicodeError) -> JSONResponse:
            # Safety net for routes whose fields are not checked at parse time: a string
            # that is not valid Unicode is the client's error, never a 500.
            return error_response(400, f"a string in the request is not valid Unicode "
                                  f"({getattr(exc, 'reason', exc)})", "invalid_request_error",
                                  "invalid_unicode")

        async def http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
            type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
            return error_response(exc.status_code, str(exc.detail), type_,
                                  getattr(exc, "code", None),
                                  headers=getattr(exc, "headers", None))

        async def unexpected(request: Request, exc: Exception) -> JSONResponse:
            log.exception("unhandled error on %s", request.url.path)
            return error_response(500, "internal error; see the box's log", "server_error")

        app.add_exception_handler(RequestValidationError, validation)
        app.add_exception_handler(UnicodeError, unicode)
        app.add_exception_handler(StarletteHTTPException, http)
        app.add_exception_handler(Exception, unexpected)

    return install

"""A small typed HTTP client for the box's admin API (docs/admin-api.md); no Textual here.

Every method is one admin route. Error answers raise :class:`BoxError` with the box's own
message (the OpenAI error shape's ``message``); connection problems raise
:class:`BoxUnreachable`. Uploads stream the file and report progress through a callback.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, NotRequired, TypedDict, cast

import httpx

log = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:8080"
CHUNK = 64 * 1024

Progress = Callable[[int, int], None]
"""Called as ``progress(bytes_sent, bytes_total)`` while a file uploads."""


class ClientError(Exception):
    """Root of every error this module raises."""


class BoxError(ClientError):
    """The box answered with an error status; ``message`` is the box's own explanation."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.code = code


class BoxUnreachable(ClientError):
    """The box could not be reached (refused, reset, timed out, DNS...)."""


class KeyFileError(ClientError):
    """The admin key file is missing, empty or readable by group/others."""


# --- shapes -------------------------------------------------------------------------------


class Model(TypedDict):
    name: str
    engine: str
    format: str
    quantisation: str | None
    size: str | None
    state: Literal["loaded", "unloaded"]
    bytes: int
    last_used: float | None
    in_use: int
    provider: NotRequired[str | None]


class Entitlements(TypedDict):
    models: list[str]
    features: list[str]


class Licence(TypedDict):
    state: Literal["valid", "grace", "expired", "evaluation", "locked", "missing"]
    licence_id: str | None
    customer: str | None
    seats: int
    seats_used: int
    entitlements: Entitlements
    valid_from: float | None
    expires_at: float | None
    days_left: int | None
    grace_days_left: int | None
    evaluation: bool
    fingerprint_match: str
    message: str
    clock_locked: NotRequired[str]


class Stats(TypedDict):
    requests_total: int
    requests_per_s: float
    tokens_out_total: int
    tokens_per_s: float
    images_total: int
    images_per_s: float
    queue_depth: int
    active_slots: int
    p95_latency_s: float | None
    cpu_percent: float
    ram_used_bytes: int
    ram_total_bytes: int
    gpu: list[str]


class Status(TypedDict):
    version: str
    uptime_s: float
    licence: Licence
    models: list[Model]
    stats: Stats


class VerifyResult(TypedDict):
    name: str
    ok: bool
    problems: list[str]


class Seat(TypedDict):
    id: int | str
    name: str
    contact: str
    role: Literal["user", "admin"]
    created: float
    requests_today: int
    requests_month: int
    tokens_today: int
    tokens_month: int


class ApiKey(TypedDict):
    id: int | str
    seat_id: int | str
    prefix: str
    created: float
    revoked: bool


class NewApiKey(ApiKey):
    key: str
    """The secret itself; the box shows it exactly once."""


class UsageRow(TypedDict):
    seat_id: int | str
    seat: str
    period: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    images: int


class Slot(TypedDict):
    """A release slot: documented with ``healthy``; the firmware status sends ``state``."""

    name: str
    version: str | None
    healthy: NotRequired[bool]
    state: NotRequired[str]
    current: NotRequired[bool]


class Updates(TypedDict):
    """Documented as current/other/min_version; the box also sends slots/floors (read both)."""

    current: Slot | str | None
    other: NotRequired[Slot | None]
    min_version: NotRequired[str | None]
    slots: NotRequired[list[Slot]]
    floors: NotRequired[dict[str, str]]
    apply_running: NotRequired[bool]
    next_boot_reason: NotRequired[str]


class UpdateRecord(TypedDict):
    id: int
    version: NotRequired[str | None]
    bundle_version: NotRequired[str | None]
    type: str
    started: float | str | None
    finished: float | str | None
    outcome: str | None
    reason: str | None


class Inspection(TypedDict):
    manifest: dict[str, Any]
    signature: str
    changes: list[str]
    problem: NotRequired[str | None]
    payloads_ok: NotRequired[bool]
    key_id: NotRequired[str]


class ApplyResult(TypedDict):
    outcome: str
    version: str | None
    reason: NotRequired[str | None]


class AuditRow(TypedDict):
    id: int
    ts: float
    actor: str | None
    action: str
    details: Any


class AuditLog(TypedDict):
    chain_ok: bool
    rows: list[AuditRow]
    bad_id: NotRequired[int | None]
    reason: NotRequired[str]


class LogLine(TypedDict):
    ts: float
    level: str
    logger: str
    message: str


class FleetReplica(TypedDict):
    model: str
    replica: str
    node_id: str
    ongoing: NotRequired[int]


class FleetNode(TypedDict):
    node_id: str
    box: str | None
    address: str | None
    alive: bool
    head: bool
    cpus: float
    gpus: float
    memory_bytes: int
    replicas: list[FleetReplica]
    load: int


class FleetModel(TypedDict):
    status: str
    running: int
    replica_states: dict[str, int]


class Fleet(TypedDict):
    address: str
    nodes: list[FleetNode]
    models: dict[str, FleetModel]


# --- key loading --------------------------------------------------------------------------


def read_key_file(path: str | os.PathLike[str]) -> str:
    """Return the admin key stored in ``path``; refuse a file group or others may read."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise KeyFileError(f"admin key file {p} does not exist (use --key or "
                           "APPLIANCE_ADMIN_KEY, or --key-file PATH)") from None
    except OSError as exc:
        raise KeyFileError(f"cannot read admin key file {p}: {exc.strerror}") from None
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise KeyFileError(
            f"admin key file {p} is accessible by group/others (mode {mode:04o}); "
            f"refusing to use it. Run: chmod 600 {p}")
    key = p.read_text(encoding="utf-8").strip()
    if not key:
        raise KeyFileError(f"admin key file {p} is empty")
    return key


def resolve_key(key: str | None, key_file: str | os.PathLike[str] | None,
                env: dict[str, str] | os._Environ[str] | None = None) -> str:
    """Pick the admin key: ``--key`` first, then $APPLIANCE_ADMIN_KEY, then the key file."""
    if key:
        return key
    env = os.environ if env is None else env
    if env.get("APPLIANCE_ADMIN_KEY"):
        return env["APPLIANCE_ADMIN_KEY"].strip()
    return read_key_file(key_file or Path("data") / "admin.key")


# --- the client ---------------------------------------------------------------------------


def _error_message(response: httpx.Response) -> tuple[str, str | None]:
    """The box's message and code from an error answer, or a readable fallback."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"]), err.get("code")
        if isinstance(body.get("detail"), str):
            return body["detail"], None
    text = response.text.strip()
    return (text[:300] if text else response.reason_phrase or f"HTTP {response.status_code}",
            None)


def _file_chunks(path: Path, total: int, progress: Progress | None) -> Iterator[bytes]:
    sent = 0
    if progress:
        progress(0, total)
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            sent += len(chunk)
            yield chunk
            if progress:
                progress(sent, total)


class AdminClient:
    """One method per admin route; thread-safe enough to share between Textual workers."""

    def __init__(self, base_url: str = DEFAULT_URL, key: str = "", *, timeout: float = 10.0,
                 upload_timeout: float = 600.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.upload_timeout = upload_timeout
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport,
                                  headers={"Authorization": f"Bearer {key}"})

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            log.info("box unreachable on %s %s: %s", method, path, exc)
            raise BoxUnreachable(f"cannot reach {self.base_url}: {exc or type(exc).__name__}"
                                 ) from exc
        if response.status_code >= 400:
            message, code = _error_message(response)
            raise BoxError(response.status_code, message, code)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise BoxError(response.status_code, f"the box sent something that is not JSON "
                           f"on {path}: {response.text[:200]!r}") from None

    def _upload(self, path: str, file: str | os.PathLike[str],
                progress: Progress | None) -> Any:
        source = Path(file)
        try:
            total = source.stat().st_size
        except OSError as exc:
            raise BoxError(0, f"cannot read {source}: {exc.strerror}") from None
        return self._json("POST", path, content=_file_chunks(source, total, progress),
                          headers={"Content-Type": "application/octet-stream",
                                   "Content-Length": str(total)},
                          timeout=self.upload_timeout)

    # status and models
    def status(self) -> Status:
        """GET /admin/status: version, uptime, licence, models and live stats."""
        return cast(Status, self._json("GET", "/admin/status"))

    def models(self) -> list[Model]:
        """GET /admin/models."""
        return cast(list[Model], self._json("GET", "/admin/models"))

    def load_model(self, name: str) -> Model:
        """POST /admin/models/{name}/load."""
        return cast(Model, self._json("POST", f"/admin/models/{name}/load"))

    def unload_model(self, name: str) -> Model:
        """POST /admin/models/{name}/unload."""
        return cast(Model, self._json("POST", f"/admin/models/{name}/unload"))

    def verify_model(self, name: str) -> VerifyResult:
        """POST /admin/models/{name}/verify: sha256 and size of every file."""
        return cast(VerifyResult, self._json("POST", f"/admin/models/{name}/verify"))

    def remove_model(self, name: str) -> str:
        """DELETE /admin/models/{name}; returns the removed name."""
        return str(self._json("DELETE", f"/admin/models/{name}")["removed"])

    # seats, keys, usage
    def seats(self) -> list[Seat]:
        """GET /admin/seats."""
        return cast(list[Seat], self._json("GET", "/admin/seats"))

    def create_seat(self, name: str, contact: str = "", role: str = "user") -> Seat:
        """POST /admin/seats (409 ``seat_limit`` past the licence's seat count)."""
        return cast(Seat, self._json("POST", "/admin/seats",
                                     json={"name": name, "contact": contact, "role": role}))

    def remove_seat(self, seat_id: int | str) -> str:
        """DELETE /admin/seats/{seat_id}; returns the removed id."""
        return str(self._json("DELETE", f"/admin/seats/{seat_id}")["removed"])

    def keys(self, seat_id: int | str) -> list[ApiKey]:
        """GET /admin/seats/{seat_id}/keys."""
        return cast(list[ApiKey], self._json("GET", f"/admin/seats/{seat_id}/keys"))

    def create_key(self, seat_id: int | str) -> NewApiKey:
        """POST /admin/seats/{seat_id}/keys; the answer carries the secret once."""
        return cast(NewApiKey, self._json("POST", f"/admin/seats/{seat_id}/keys"))

    def revoke_key(self, key_id: int | str) -> ApiKey:
        """POST /admin/keys/{key_id}/revoke."""
        return cast(ApiKey, self._json("POST", f"/admin/keys/{key_id}/revoke"))

    def rotate_key(self, key_id: int | str) -> NewApiKey:
        """POST /admin/keys/{key_id}/rotate: a new key, the old one revoked."""
        return cast(NewApiKey, self._json("POST", f"/admin/keys/{key_id}/rotate"))

    def usage(self, seat_id: int | str | None = None, period: str = "day") -> list[UsageRow]:
        """GET /admin/usage for one seat or all, by ``day`` or ``month``."""
        params = {"period": period} | ({"seat_id": str(seat_id)} if seat_id else {})
        return cast(list[UsageRow], self._json("GET", "/admin/usage", params=params))

    def usage_csv(self, seat_id: int | str | None = None) -> str:
        """GET /admin/usage.csv: the usage rows as CSV text."""
        params = {"seat_id": str(seat_id)} if seat_id else {}
        return self._request("GET", "/admin/usage.csv", params=params).text

    # licence
    def licence(self) -> Licence:
        """GET /admin/licence."""
        return cast(Licence, self._json("GET", "/admin/licence"))

    def licence_request(self) -> dict[str, Any]:
        """POST /admin/licence/request: the activation request to send to the vendor."""
        return cast(dict[str, Any], self._json("POST", "/admin/licence/request"))

    def licence_import(self, activation: bytes) -> Licence:
        """POST /admin/licence/import with the vendor's activation JSON, as sent."""
        return cast(Licence, self._json("POST", "/admin/licence/import", content=activation,
                                        headers={"Content-Type": "application/json"}))

    def ack_clock(self) -> Licence:
        """POST /admin/licence/ack-clock: accept the current clock, unlock inference."""
        return cast(Licence, self._json("POST", "/admin/licence/ack-clock"))

    # updates
    def updates(self) -> Updates:
        """GET /admin/updates: current and other release slot, minimum version."""
        return cast(Updates, self._json("GET", "/admin/updates"))

    def update_history(self) -> list[UpdateRecord]:
        """GET /admin/updates/history."""
        return cast(list[UpdateRecord], self._json("GET", "/admin/updates/history"))

    def inspect_update(self, file: str | os.PathLike[str],
                       progress: Progress | None = None) -> Inspection:
        """POST /admin/updates/inspect with the bundle's bytes; nothing changes on the box."""
        return cast(Inspection, self._upload("/admin/updates/inspect", file, progress))

    def apply_update(self, file: str | os.PathLike[str],
                     progress: Progress | None = None) -> ApplyResult:
        """POST /admin/updates/apply with the bundle's bytes (also imports model packs)."""
        return cast(ApplyResult, self._upload("/admin/updates/apply", file, progress))

    def rollback(self) -> ApplyResult:
        """POST /admin/updates/rollback."""
        return cast(ApplyResult, self._json("POST", "/admin/updates/rollback"))

    # logs
    def audit(self, limit: int = 100, q: str = "") -> AuditLog:
        """GET /admin/audit: the newest rows and whether the hash chain holds."""
        return cast(AuditLog, self._json("GET", "/admin/audit",
                                         params={"limit": limit, "q": q}))

    def logs(self, limit: int = 100, q: str = "") -> list[LogLine]:
        """GET /admin/logs: recent warnings and errors."""
        return cast(list[LogLine], self._json("GET", "/admin/logs",
                                              params={"limit": limit, "q": q}))

    # fleet
    def fleet(self) -> Fleet | None:
        """GET /admin/fleet: nodes, their health, the replicas on each and their load;
        None when this box is not a fleet head (the route is absent: 404)."""
        try:
            return cast(Fleet, self._json("GET", "/admin/fleet"))
        except BoxError as exc:
            if exc.status == 404:
                return None
            raise


def dump_json(data: Any) -> str:
    """Pretty JSON as written to request files."""
    return json.dumps(data, indent=2, sort_keys=True) + "\n"

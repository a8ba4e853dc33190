"""The fleet CLI's calls to the running box's own API (``appliance serve``), and the one way
an error answer of a box is read. Plain Python; no Ray."""

from __future__ import annotations

from typing import Any

from appliance.settings import Settings
from fleet.errors import FleetError

MAX_MESSAGE_CHARS = 500


def error_message(response: Any) -> str:
    """The message of a box's error answer (``{"error": {"message": ...}}``), else its text."""
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:MAX_MESSAGE_CHARS]


def base_url(settings: Settings, api: str | None = None) -> str:
    """``api`` if given, else the box this config describes (a wildcard bind is reached on
    127.0.0.1)."""
    if api:
        return api.rstrip("/")
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    return f"http://{host}:{settings.port}"


def call(settings: Settings, api: str, method: str, path: str, **kw: Any) -> Any:
    """One admin request to the box at ``api`` with the admin key of ``settings``'s data
    directory; its JSON answer, or FleetError saying what went wrong."""
    import httpx

    key = settings.data_dir / "admin.key"
    if not key.is_file():
        raise FleetError(f"no admin key in {key}: run this on the box, as its owner")
    headers = {"Authorization": f"Bearer {key.read_text().strip()}"}
    try:
        r = httpx.request(method, api + path, headers=headers, timeout=30, **kw)
    except httpx.HTTPError as exc:
        raise FleetError(f"cannot reach the box's API at {api} ({exc}); is `appliance "
                         "serve` running? (--api URL)") from exc
    if r.status_code >= 400:
        raise FleetError(f"the box answered {r.status_code}: {error_message(r)}")
    return r.json()

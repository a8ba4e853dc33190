"""The HTTP client of cloud overflow: one request to a remote OpenAI-compatible endpoint.

Whatever goes wrong there becomes a clear error of this box, never a 500: a remote that
cannot be reached, times out or is itself overloaded (429, 502, 503, 504) is
``RemoteUnavailableError`` (503 with Retry-After), any other error answer or a body that
is not what the OpenAI API sends is ``RemoteError`` (502), each naming the remote. The key
goes in the ``Authorization`` header only; no log line carries it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx

from appliance.egress import Remote
from appliance.errors import RemoteError, RemoteUnavailableError

log = logging.getLogger(__name__)
BUSY = (429, 502, 503, 504)
MAX_ERROR_CHARS = 500


def _retry_after(response: httpx.Response, default: float = 5.0) -> float:
    try:
        return max(1.0, float(response.headers.get("retry-after", default)))
    except ValueError:
        return default


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])[:MAX_ERROR_CHARS]
    except (ValueError, KeyError, TypeError):
        return response.text[:MAX_ERROR_CHARS] or response.reason_phrase


def _refusal(remote: Remote, response: httpx.Response) -> RemoteError:
    what = f"remote {remote.name!r} answered {response.status_code}: {_message(response)}"
    if response.status_code in BUSY:
        return RemoteUnavailableError(what, _retry_after(response))
    if response.status_code in (401, 403):
        return RemoteError(f"{what} (its key, set by `appliance fleet add-remote`, was "
                           "refused)")
    return RemoteError(what)


UNREACHABLE = (httpx.HTTPError, httpx.InvalidURL)


def _unreachable(remote: Remote, exc: Exception) -> RemoteUnavailableError:
    return RemoteUnavailableError(f"remote {remote.name!r} cannot be reached "
                                  f"({type(exc).__name__}: {exc})")


class RemoteStream:
    """An opened streamed answer (status 200 already checked): its parsed events."""

    def __init__(self, remote: Remote, response: httpx.Response) -> None:
        self.remote = remote
        self.response = response

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Each ``data:`` object until ``[DONE]`` (or the end of the body); an error event
        raises RemoteError, a cut connection RemoteUnavailableError."""
        try:
            async for line in self.response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                try:
                    obj = json.loads(data)
                except ValueError as exc:
                    raise RemoteError(f"remote {self.remote.name!r} sent an event that is "
                                      f"not JSON: {data[:100]!r}") from exc
                if not isinstance(obj, dict):
                    raise RemoteError(f"remote {self.remote.name!r} sent an event that is "
                                      "not an object")
                if "error" in obj:
                    err = obj["error"] if isinstance(obj["error"], dict) else {}
                    raise RemoteError(f"remote {self.remote.name!r} ended the stream: "
                                      f"{str(err.get('message', obj['error']))[:MAX_ERROR_CHARS]}")
                yield obj
        except httpx.HTTPError as exc:
            raise _unreachable(self.remote, exc) from exc

    async def aclose(self) -> None:
        await self.response.aclose()


class RemoteClient:
    """Async HTTP to remotes; one connection pool for the box (closed with the app)."""

    def __init__(self, connect_timeout_s: float = 5.0, read_timeout_s: float = 600.0) -> None:
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(read_timeout_s,
                                                            connect=connect_timeout_s))

    @staticmethod
    def _request(remote: Remote, key: str, path: str, body: dict[str, Any]
                 ) -> tuple[str, dict[str, str], bytes]:
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        content = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        return remote.url + path, headers, content

    async def complete(self, remote: Remote, key: str, path: str, body: dict[str, Any]
                       ) -> dict[str, Any]:
        """POST ``body`` to ``path`` under the remote's base URL; its JSON answer."""
        url, headers, content = self._request(remote, key, path, body)
        try:
            response = await self.http.post(url, headers=headers, content=content)
        except UNREACHABLE as exc:
            raise _unreachable(remote, exc) from exc
        if response.status_code != 200:
            raise _refusal(remote, response)
        try:
            data = response.json()
        except ValueError as exc:
            raise RemoteError(f"remote {remote.name!r} answered 200 without JSON") from exc
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
            raise RemoteError(f"remote {remote.name!r} answered without 'choices'")
        return data

    async def stream(self, remote: Remote, key: str, path: str, body: dict[str, Any]
                     ) -> RemoteStream:
        """POST a streamed request; returns once the remote answered 200 (else raises)."""
        url, headers, content = self._request(remote, key, path, body)
        try:
            request = self.http.build_request("POST", url, headers=headers, content=content)
            response = await self.http.send(request, stream=True)
        except UNREACHABLE as exc:
            raise _unreachable(remote, exc) from exc
        if response.status_code != 200:
            try:
                await response.aread()
            except httpx.HTTPError:
                pass
            finally:
                await response.aclose()
            raise _refusal(remote, response)
        return RemoteStream(remote, response)

    async def aclose(self) -> None:
        await self.http.aclose()

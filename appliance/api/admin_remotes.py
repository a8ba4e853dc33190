"""Admin API: the remote endpoints this box may overflow to (``appliance.egress``).

``appliance fleet add-remote`` / ``remove-remote`` / ``remotes`` call these routes. The
key is accepted here and written to a 0600 file; no answer, log line or audit row
carries it.
"""

from __future__ import annotations

from typing import Any

import anyio
from fastapi import APIRouter
from pydantic import BaseModel, Field

from appliance.deps import AdminDep, GuardDep, RemotesDep
from appliance.egress import NAME_RE, parse_models
from appliance.remotes import MAX_KEY_BYTES
from engines.errors import InvalidRequestError

router = APIRouter(prefix="/admin", tags=["admin"])


class RemoteIn(BaseModel):
    """A remote OpenAI-compatible endpoint and the models it serves."""

    name: str = Field(min_length=1, max_length=64, pattern=NAME_RE.pattern,
                      description="Its name in usage rows and X-Appliance-Node.")
    url: str = Field(min_length=1, max_length=2000,
                     description="Its OpenAI base URL, e.g. https://cloud.example/v1.")
    key: str = Field(min_length=1, max_length=MAX_KEY_BYTES,
                     description="Its API key (stored 0600).")
    models: str = Field("*", max_length=10_000, description=(
        "Comma-separated models of this box it serves, each NAME or NAME=ITS_NAME; '*' "
        "(the default): every model, under the same name."))
    replace: bool = Field(False, description="Replace a remote of the same name.")


@router.get("/remotes")
def list_remotes(remotes: RemotesDep, admin: AdminDep) -> list[dict[str, Any]]:
    return [r.to_json() for r in remotes.list()]


@router.post("/remotes", status_code=201)
async def add_remote(body: RemoteIn, remotes: RemotesDep, guard: GuardDep, admin: AdminDep
                     ) -> dict[str, Any]:
    """Register a remote (audited as ``remote.add``, without its key)."""
    try:
        models = parse_models(body.models)
    except ValueError as exc:
        raise InvalidRequestError(str(exc)) from exc

    def add() -> dict[str, Any]:
        remote = remotes.add(body.name, body.url, body.key, models, replace=body.replace)
        guard.audit.append(admin.name, "remote.add", remote.to_json())
        return remote.to_json()

    return await anyio.to_thread.run_sync(add)


@router.delete("/remotes/{name}")
async def remove_remote(name: str, remotes: RemotesDep, guard: GuardDep, admin: AdminDep
                        ) -> dict[str, Any]:
    """Forget a remote and delete its key (audited as ``remote.remove``)."""
    def remove() -> dict[str, Any]:
        remote = remotes.remove(name)
        guard.audit.append(admin.name, "remote.remove", {"name": remote.name,
                                                         "url": remote.url})
        return {"removed": remote.name}

    return await anyio.to_thread.run_sync(remove)

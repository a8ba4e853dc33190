"""``POST /healthz/probe``: the update health check, answerable only by this very process.

The updater proves it holds the one-time token it wrote (``firmware.health``); the box runs
one real inference and answers its pid with an HMAC only a holder of the token can compute.
The token is accepted here and nowhere else, and each nonce only once: it is no API key.
"""

from __future__ import annotations

import hmac
import os
import time
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from appliance.deps import LifecycleDep, RuntimeDep, SettingsDep
from firmware.health import PROBE_PATH, probe_answer, probe_proof, read_token
from licensing.errors import Unauthenticated

router = APIRouter(tags=["ops"])
MAX_NONCES = 1024


class ProbeIn(BaseModel):
    nonce: str = Field(pattern=r"^[0-9a-f]{32,128}$")
    proof: str = Field(pattern=r"^[0-9a-f]{64}$")
    inference: bool = True
    model: str | None = Field(None, max_length=200)


@router.post(PROBE_PATH, include_in_schema=False)
async def probe(body: ProbeIn, settings: SettingsDep, runtime: RuntimeDep,
                life: LifecycleDep) -> dict[str, Any]:
    """401 unless ``proof`` matches the current probe token; then one token of inference."""
    token = read_token(settings.data_dir, time.time())
    seen = runtime.probe_nonces
    if (token is None or body.nonce in seen
            or not hmac.compare_digest(probe_proof(token, body.nonce), body.proof)):
        raise Unauthenticated("no valid update probe token for this request")
    if len(seen) >= MAX_NONCES:
        seen.clear()
    seen.add(body.nonce)
    if body.inference:
        await life.one_token(body.model or settings.default_llm)
    pid = os.getpid()
    return {"pid": pid, "answer": probe_answer(token, body.nonce, pid)}

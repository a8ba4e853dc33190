"""An in-memory box with the same methods as tui.client.AdminClient, on fixed data.

Only for layout and interaction tests of the TUI: nothing here is time-dependent, so
snapshots are deterministic. ``down`` makes every call raise BoxUnreachable; ``fail``
maps a method name to the BoxError it raises next.
"""

from __future__ import annotations

import copy
import threading
from pathlib import Path
from typing import Any

from tui.client import BoxError, BoxUnreachable, Progress

T0 = 1795000000.0  # 2026-11-18 11:06:40 UTC; every timestamp below is fixed

LICENCE: dict[str, Any] = {
    "state": "evaluation", "licence_id": "eval-7f3a", "customer": "ACME Robotics",
    "seats": 3, "seats_used": 2,
    "entitlements": {"models": ["smollm2-135m-instruct", "ppocr-v4"],
                     "features": ["llm", "vision", "updates"]},
    "valid_from": T0 - 86400 * 2, "expires_at": T0 + 86400 * 28, "days_left": 28,
    "grace_days_left": None, "evaluation": True, "fingerprint_match": "match (6/6 components)",
    "message": "Evaluation licence: 30 days, 3 seats.",
}

MODELS: list[dict[str, Any]] = [
    {"name": "smollm2-135m-instruct", "engine": "llm", "format": "gguf", "quantisation": "Q4_1",
     "size": 100_834_912, "state": "loaded", "bytes": 187_000_000, "last_used": T0 - 30,
     "in_use": 1, "provider": "llama.cpp cpu"},
    {"name": "ppocr-v4", "engine": "ocr", "format": "onnx", "quantisation": None,
     "size": 15_708_314, "state": "unloaded", "bytes": 0, "last_used": None,
     "in_use": 0, "provider": "CPUExecutionProvider"},
]

STATS: dict[str, Any] = {
    "requests_total": 1234, "requests_per_s": 3.5, "tokens_out_total": 98765,
    "tokens_per_s": 142.0, "images_total": 17, "images_per_s": 0.2, "queue_depth": 2,
    "active_slots": 3, "p95_latency_s": 0.84, "cpu_percent": 61.0,
    "ram_used_bytes": 3 * 2**30, "ram_total_bytes": 16 * 2**30, "gpu": [],
}

FLEET: dict[str, Any] = {
    "address": "10.0.0.1:6380",
    "nodes": [
        {"node_id": "n-head", "box": "head", "address": "10.0.0.1", "alive": True,
         "head": True, "cpus": 0.0, "gpus": 0.0, "memory_bytes": 8 * 2**30, "replicas": [],
         "load": 0},
        {"node_id": "n-a", "box": "box-a", "address": "10.0.0.2", "alive": True,
         "head": False, "cpus": 8.0, "gpus": 1.0, "memory_bytes": 32 * 2**30, "load": 3,
         "replicas": [{"model": "smollm2-135m-instruct", "replica": "k3v9x2", "node_id": "n-a",
                       "pid": 4242, "ongoing": 3}]},
        {"node_id": "n-b", "box": "box-b", "address": "10.0.0.3", "alive": False,
         "head": False, "cpus": 8.0, "gpus": 0.0, "memory_bytes": 32 * 2**30, "replicas": [],
         "load": 0},
    ],
    "models": {"smollm2-135m-instruct": {"status": "RUNNING", "running": 1,
                                         "replica_states": {"RUNNING": 1, "STARTING": 1}}},
}


class FakeBox:
    """Same public methods as AdminClient; state lives in memory, guarded by a lock."""

    base_url = "http://fake-box:8080"

    def __init__(self) -> None:
        self.down = False
        self.chain_ok = True
        self.fleet_head = True
        self.fail: dict[str, BoxError] = {}
        self.calls: list[str] = []
        self.requests_total = STATS["requests_total"]
        self._lock = threading.Lock()
        self._models = copy.deepcopy(MODELS)
        self._licence = copy.deepcopy(LICENCE)
        self._seats: list[dict[str, Any]] = [
            {"id": 1, "name": "admin", "contact": "", "role": "admin",
             "created": T0 - 86400 * 2, "requests_today": 4, "requests_month": 40,
             "tokens_today": 900, "tokens_month": 9100},
            {"id": 2, "name": "alice", "contact": "alice@acme.test", "role": "user",
             "created": T0 - 86400, "requests_today": 12, "requests_month": 310,
             "tokens_today": 5120, "tokens_month": 88000},
        ]
        self._keys: list[dict[str, Any]] = [
            {"id": "a1b2c3", "seat_id": 1, "prefix": "sk-box-a1b2c3",
             "created": T0 - 86400 * 2, "revoked": False},
            {"id": "d4e5f6", "seat_id": 2, "prefix": "sk-box-d4e5f6", "created": T0 - 86400,
             "revoked": False},
        ]
        # updates as the firmware status and history send them (not the doc's shape)
        self._history: list[dict[str, Any]] = [
            {"id": 1, "bundle_version": "0.1.0", "type": "release", "bundle": "r.bundle",
             "key_id": "vendor-2026", "started": "2026-11-18T10:06:40Z",
             "finished": "2026-11-18T10:08:02Z", "outcome": "success", "reason": "",
             "step": "commit"},
        ]
        self._slots: dict[str, Any] = {
            "current": "a", "next_boot": "a", "next_boot_reason": "", "apply_running": False,
            "installed": {"release": "0.1.0"}, "floors": {"release": "0.1.0"}, "boot": {},
            "slots": [{"name": "a", "state": "committed", "version": "0.1.0", "current": True},
                      {"name": "b", "state": "empty", "version": None, "current": False}],
            "interrupted": [], "last": None}
        self._counter = 2

    def _enter(self, name: str) -> None:
        self.calls.append(name)
        if self.down:
            raise BoxUnreachable("cannot reach http://fake-box:8080: connection refused")
        if name in self.fail:
            raise self.fail.pop(name)

    def close(self) -> None:
        pass

    def status(self) -> dict[str, Any]:
        self._enter("status")
        stats = dict(STATS, requests_total=self.requests_total)
        return {"version": "0.1.0", "uptime_s": 11_400.0, "licence": self.licence(),
                "models": copy.deepcopy(self._models), "stats": stats}

    def models(self) -> list[dict[str, Any]]:
        self._enter("models")
        return copy.deepcopy(self._models)

    def _model(self, name: str) -> dict[str, Any]:
        for m in self._models:
            if m["name"] == name:
                return m
        raise BoxError(404, f"model {name!r} not found", "model_not_found")

    def load_model(self, name: str) -> dict[str, Any]:
        self._enter("load_model")
        self._model(name)["state"] = "loaded"
        return dict(self._model(name))

    def unload_model(self, name: str) -> dict[str, Any]:
        self._enter("unload_model")
        self._model(name)["state"] = "unloaded"
        return dict(self._model(name))

    def verify_model(self, name: str) -> dict[str, Any]:
        self._enter("verify_model")
        self._model(name)
        return {"name": name, "ok": True, "problems": []}

    def remove_model(self, name: str) -> str:
        self._enter("remove_model")
        self._models.remove(self._model(name))
        return name

    def seats(self) -> list[dict[str, Any]]:
        self._enter("seats")
        return copy.deepcopy(self._seats)

    def create_seat(self, name: str, contact: str = "", role: str = "user") -> dict[str, Any]:
        self._enter("create_seat")
        with self._lock:
            if len(self._seats) >= self._licence["seats"]:
                raise BoxError(409, f"the licence allows {self._licence['seats']} seat(s) and "
                               f"{len(self._seats)} are in use; delete a seat or import a "
                               "licence with more seats", "seat_limit")
            self._counter += 1
            seat = {"id": self._counter, "name": name, "contact": contact, "role": role,
                    "created": T0, "requests_today": 0, "requests_month": 0,
                    "tokens_today": 0, "tokens_month": 0}
            self._seats.append(seat)
            self._licence["seats_used"] = len(self._seats)
        return dict(seat)

    def remove_seat(self, seat_id: str) -> str:
        self._enter("remove_seat")
        self._seats = [s for s in self._seats if s["id"] != seat_id]
        return seat_id

    def keys(self, seat_id: str) -> list[dict[str, Any]]:
        self._enter("keys")
        return [dict(k) for k in self._keys if k["seat_id"] == seat_id]

    def create_key(self, seat_id: str) -> dict[str, Any]:
        self._enter("create_key")
        with self._lock:
            n = f"{len(self._keys) + 1:06x}"
            key = {"id": n, "seat_id": seat_id, "prefix": f"sk-box-{n}", "created": T0,
                   "revoked": False}
            self._keys.append(key)
        return dict(key, key=f"sk-box-{n}.SECRET-of-seat-{seat_id}")

    def revoke_key(self, key_id: str) -> dict[str, Any]:
        self._enter("revoke_key")
        for k in self._keys:
            if k["id"] == key_id:
                k["revoked"] = True
                return dict(k)
        raise BoxError(404, f"key {key_id} not found")

    def rotate_key(self, key_id: str) -> dict[str, Any]:
        self._enter("rotate_key")
        old = self.revoke_key(key_id)
        return self.create_key(old["seat_id"])

    def usage(self, seat_id: str | None = None, period: str = "day") -> list[dict[str, Any]]:
        self._enter("usage")
        return [{"seat_id": s["id"], "seat": s["name"], "period": period,
                 "requests": s["requests_today"], "prompt_tokens": 10, "completion_tokens": 20,
                 "images": 0} for s in self._seats if seat_id in (None, s["id"])]

    def usage_csv(self, seat_id: str | None = None) -> str:
        self._enter("usage_csv")
        lines = ["seat_id,seat,period,requests,prompt_tokens,completion_tokens,images"]
        lines += [f"{s['id']},{s['name']},day,{s['requests_today']},10,20,0"
                  for s in self._seats if seat_id in (None, s["id"])]
        return "\n".join(lines) + "\n"

    def licence(self) -> dict[str, Any]:
        self._enter("licence")
        return copy.deepcopy(self._licence)

    def licence_request(self) -> dict[str, Any]:
        self._enter("licence_request")
        return {"type": "activation-request", "fingerprint": "fp-1234", "created": T0}

    def licence_import(self, activation: bytes) -> dict[str, Any]:
        self._enter("licence_import")
        if b"licence" not in activation:
            raise BoxError(400, "activation file is not a signed licence")
        self._licence.update(state="valid", evaluation=False, licence_id="L-2026-0042",
                             seats=10, days_left=365, message="")
        return copy.deepcopy(self._licence)

    def ack_clock(self) -> dict[str, Any]:
        self._enter("ack_clock")
        return copy.deepcopy(self._licence)

    def updates(self) -> dict[str, Any]:
        self._enter("updates")
        return copy.deepcopy(self._slots)

    def update_history(self) -> list[dict[str, Any]]:
        self._enter("update_history")
        return copy.deepcopy(self._history)

    def _read(self, file: str | Path, progress: Progress | None) -> bytes:
        data = Path(file).read_bytes()
        if progress:
            progress(0, len(data))
            progress(len(data), len(data))
        return data

    def inspect_update(self, file: str | Path, progress: Progress | None = None
                       ) -> dict[str, Any]:
        """SIGNED… bundles verify; SIGNED-OLD… is below the version floor; others fail."""
        self._enter("inspect_update")
        data = self._read(file, progress)
        if not data.startswith(b"SIGNED"):
            raise BoxError(400, "bundle signature does not verify with any trusted key",
                           "bundle_signature")
        old = data.startswith(b"SIGNED-OLD")
        version = "0.0.9" if old else "0.2.0"
        return {"manifest": {"format": "appliance-bundle/1", "type": "release",
                             "version": version, "payloads": [{"path": "release.tar",
                                                               "size": len(data)}]},
                "key_id": "vendor-2026", "signature": "valid", "payloads_ok": True,
                "problem": "version 0.0.9 is below the floor 0.1.0" if old else None,
                "changes": [f"release {version}: release.tar ({len(data)} bytes)"]}

    def apply_update(self, file: str | Path, progress: Progress | None = None
                     ) -> dict[str, Any]:
        self._enter("apply_update")
        self._read(file, progress)
        self._history.append({"id": len(self._history) + 1, "bundle_version": "0.2.0",
                              "type": "release", "started": "2026-11-18T11:06:40Z",
                              "finished": "2026-11-18T11:07:40Z", "outcome": "success",
                              "reason": "", "step": "commit"})
        self._slots["slots"][1].update(state="ready", version="0.2.0")
        return {"id": 2, "type": "release", "version": "0.2.0", "outcome": "success",
                "reason": "", "slot": "b"}

    def rollback(self) -> dict[str, Any]:
        self._enter("rollback")
        return {"outcome": "success", "version": "0.1.0"}

    def audit(self, limit: int = 100, q: str = "") -> dict[str, Any]:
        self._enter("audit")
        rows = [  # oldest first, as the box sends them
            {"id": 1, "ts": T0 - 86400 * 2, "actor": "system", "action": "licence.evaluation",
             "details": {"days": 30}},
            {"id": 2, "ts": T0 - 120, "actor": "admin", "action": "seat.create",
             "details": {"name": "alice", "seat_id": 2}},
            {"id": 3, "ts": T0 - 60, "actor": "admin", "action": "key.issue",
             "details": {"key_id": "d4e5f6", "seat_id": 2}},
        ]
        rows = [r for r in rows if q.lower() in (r["action"] + str(r["details"])).lower()]
        return {"chain_ok": self.chain_ok, "chain_rows": 3, "bad_id": None, "reason": "",
                "rows": rows[-limit:]}

    def logs(self, limit: int = 100, q: str = "") -> list[dict[str, Any]]:
        self._enter("logs")
        lines = [
            {"ts": T0 - 30, "level": "WARNING", "logger": "appliance.registry",
             "message": "unloading ppocr-v4: idle for 900 s"},
            {"ts": T0 - 90, "level": "ERROR", "logger": "appliance.api",
             "message": "context_length_exceeded: 2300 tokens > 2048"},
        ]
        return [x for x in lines if q.lower() in x["message"].lower()][:limit]

    def fleet(self) -> dict[str, Any] | None:
        self._enter("fleet")
        return copy.deepcopy(FLEET) if self.fleet_head else None

"""Cost of the licence and seat checks on the request path, in one run.

Two real servers on loopback serve ``GET /v1/models`` (a trivial authenticated endpoint):
one with the full guard (key lookup, licence state, entitlement, per-seat limits and usage
metering), one where authentication is replaced by a fixed caller. A load generator in
another process keeps ``--clients`` requests in flight for ``--seconds``; rounds alternate
the two servers and medians are compared.

    .venv/bin/python bench/licence_overhead.py [--rounds 5] [--seconds 5] [--clients 8]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import free_port  # noqa: E402

SERVER = r"""
import contextlib, sys, uvicorn
from appliance.app import create_app
from appliance.lifecycle import Call
from appliance.settings import load_settings
from licensing.guard import SeatContext
from licensing.seats import SeatLimits

port, guarded = int(sys.argv[1]), sys.argv[2] == "guard"
app = create_app(load_settings(port=port))
if not guarded:
    ctx = SeatContext(seat_id=1, name="admin", role="admin", key_id="k", licence_state="valid",
                      evaluation=False, days_left=30, licence_id="bench", limits=SeatLimits())

    async def open_door(request, headers):
        return Call(ctx, "/v1/models", app.state.lifecycle, headers, slot_held=False)

    async def no_ledger(call, status):
        return None

    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def unguarded(a):
        async with inner(a) as state:
            a.state.lifecycle.admit = open_door
            a.state.lifecycle.settle = no_ledger
            yield state

    app.router.lifespan_context = unguarded
uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
"""

LOAD = r"""
import asyncio, json, sys, time, httpx
url, key, clients, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
async def worker(client, stop, counts):
    while time.perf_counter() < stop:
        r = await client.get(url, headers={"Authorization": "Bearer " + key})
        counts[r.status_code] = counts.get(r.status_code, 0) + 1
async def main():
    counts = {}
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        start = time.perf_counter()
        stop = start + seconds
        await asyncio.gather(*(worker(client, stop, counts) for _ in range(clients)))
        elapsed = time.perf_counter() - start
    print(json.dumps({"rps": sum(counts.values()) / elapsed, "codes": counts}))
asyncio.run(main())
"""


def start(data: Path, guarded: bool) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {"APPLIANCE_DATA_DIR": str(data), "APPLIANCE_CONFIG": "/dev/null",
           "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(port),
                             "guard" if guarded else "open"], cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("server did not start")


def load(url: str, key: str, clients: int, seconds: float) -> dict:
    out = subprocess.run([sys.executable, "-c", LOAD, url + "/v1/models", key, str(clients),
                          str(seconds)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--clients", type=int, default=8)
    args = ap.parse_args()
    data = Path(tempfile.mkdtemp(prefix="bench-licence-"))
    guarded, gurl = start(data, True)
    key = (data / "admin.key").read_text().strip()
    # A user seat without per-minute or daily limits, so the load is never throttled.
    r = httpx.post(gurl + "/admin/seats", headers={"Authorization": f"Bearer {key}"},
                   json={"name": "bench", "max_concurrent": 0, "requests_per_minute": 0,
                         "tokens_per_day": 0})
    seat = r.json()["id"]
    key = httpx.post(gurl + f"/admin/seats/{seat}/keys",
                     headers={"Authorization": f"Bearer {key}"}).json()["key"]
    opened, ourl = start(Path(tempfile.mkdtemp(prefix="bench-open-")), False)
    with_checks, without = [], []
    try:
        load(gurl, key, args.clients, 1)
        load(ourl, key, args.clients, 1)
        for i in range(args.rounds):
            a = load(gurl, key, args.clients, args.seconds)
            b = load(ourl, key, args.clients, args.seconds)
            assert set(a["codes"]) == {"200"} and set(b["codes"]) == {"200"}, (a, b)
            with_checks.append(a["rps"])
            without.append(b["rps"])
            print(f"round {i + 1}: with checks {a['rps']:8.1f} req/s   without "
                  f"{b['rps']:8.1f} req/s", flush=True)
    finally:
        for proc in (guarded, opened):
            proc.terminate()
            proc.wait()
    w, wo = statistics.median(with_checks), statistics.median(without)
    cost = 1 - w / wo
    print(f"\nGET /v1/models, {args.clients} clients, {args.seconds:g}s x {args.rounds} rounds")
    print(f"with licence+seat checks    median {w:8.1f} req/s")
    print(f"without (fixed caller)      median {wo:8.1f} req/s")
    print(f"cost of the checks = {cost * 100:.1f}%   (target <= 5%: "
          f"{'MET' if cost <= 0.05 else 'MISSED'})")


if __name__ == "__main__":
    main()

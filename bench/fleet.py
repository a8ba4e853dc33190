"""A fleet of two one-core boxes against one one-core box, side by side; the fleet's ingress
overhead; the memory each Ray process takes.

One run starts both and measures them in interleaved rounds (medians over rounds):

  fleet   a Ray head (``num_cpus=0``: GCS, Serve controller) and two worker nodes "a" and
          "b", each pinned to one core (``sched_setaffinity`` before ``ray start``: the
          raylet, its agents, the Serve replica and the replica's engine worker all
          inherit it), behind the box's API as the Serve ingress (the "head box", with its
          Ray driver), ``fleet_min_replicas = fleet_max_replicas = 2`` and
          ``fleet_replica_cpus = 1`` (so llama.cpp runs 1 thread and one replica lands on
          each node)
  direct  one box, no Ray: its engine worker pinned to core a (every thread of it), 1
          llama.cpp thread

Both serve the same SmolLM2 pack with the same slots. The API processes (head box,
direct box), the Ray head and this client run on the remaining cores ("head cores"), or
share cores a and b on a machine with fewer than three.

  throughput  16 clients at once through the official ``openai`` client, streaming, one
              fresh question each, ``--tokens`` out; aggregate generated tokens / wall time
              from the first request sent to the last byte received. Target fleet/direct
              >= 1.7.
  overhead    one client, the same request (same bytes, 8 tokens out, streamed) sent
              ``--overhead`` times to each, alternating fleet and direct; a request's time
              runs from sending it to the last byte of its stream. The figure is
              p50(through the fleet head) - p50(direct). Target <= 5 ms.
  split       the overhead again after moving every engine worker (both systems') onto
              node a's core and every other process (APIs, Ray, replicas, this client)
              onto node b's: what the ingress adds when no serving code takes CPU from
              the engine that answers, as on boxes with a core to spare (``--no-split``
              skips it)
  memory      RSS of every process of each Ray node (found by walking the node's process
              tree), the replicas' engine workers, and the two API processes.

    .venv/bin/python bench/fleet.py [--rounds 3] [--clients 16] [--tokens 64]
        [--overhead 40] [--no-split] [--box-cores 0,1] [--head-cores 2,3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appliance.modelstore import ModelStore, fetch  # noqa: E402
from bench.llm_peer import QUESTIONS  # noqa: E402  (the same 16 questions as the peer bench)
from fleet.errors import NodeError  # noqa: E402
from fleet.node import BOX_ENV, NodePlan, NodeProcess, free_ports, own_ports  # noqa: E402
from fleet.token import new_token, write_token  # noqa: E402
from tests.conftest import LLM, TEST_MODELS, WHEEL_CACHE, Box  # noqa: E402

#: Loopback addresses of this bench's nodes: the fleet tests use 127.0.0.2-127.0.0.6.
HEAD_IP, BOX_IPS = "127.0.0.20", {"a": "127.0.0.21", "b": "127.0.0.22"}
SLOTS, CTX = 8, 1024
#: Ray starts its workers (the replicas) at nice 15 and an engine worker runs 5 nicer than
#: its parent: keep replicas at 0 so that replica and engine (0 / 5) sit where a box's API
#: and engine do, and a busy machine's other work weighs on both systems alike.
SAME_NICE = {"RAY_worker_niceness": "0"}
OBJECT_STORE = 80 << 20
SAME_REQUEST = [{"role": "user", "content": "Say hello in one short sentence."}]
_serial = iter(range(1, 1 << 30))


# --- CPU affinity ----------------------------------------------------------------------
@contextlib.contextmanager
def pinned(cores: set[int]) -> Iterator[None]:
    """Processes started inside run on ``cores`` (a child inherits its parent thread's
    affinity at fork); this thread gets its own affinity back afterwards."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def pin_process(pid: int, cores: set[int]) -> None:
    """Move every thread of a running process onto ``cores``."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(tid), cores)


def affinity(pid: int) -> str:
    try:
        return ",".join(map(str, sorted(os.sched_getaffinity(pid))))
    except OSError:
        return "?"


# --- Ray process roles -----------------------------------------------------------------
def role(name: str, cmdline: list[str]) -> str:
    """What a process of a Ray node is, from its name and command line (pure)."""
    line = " ".join(cmdline)
    if "engines.worker" in line:
        return "engine worker (llama.cpp)"
    if name == "gcs_server" or "gcs_server" in line.split(" ", 1)[0]:
        return "gcs_server"
    if name == "raylet" or line.split(" ", 1)[0].endswith("/raylet"):
        return "raylet"
    for marker, label in (("ServeController", "Serve controller"),
                          ("DashboardAgent", "dashboard agent"),
                          ("ray.util.client.server", "Ray Client server"),
                          ("RuntimeEnvAgent", "runtime-env agent"),
                          ("ServeReplica", "Serve replica (actor)"),
                          ("ProxyActor", "Serve proxy"),
                          ("ray::IDLE", "idle Ray worker"),
                          ("dashboard/agent.py", "dashboard agent"),
                          ("runtime_env/agent/main.py", "runtime-env agent"),
                          ("log_monitor.py", "log monitor"),
                          ("autoscaler/_private/monitor.py", "autoscaler monitor"),
                          ("dashboard/dashboard.py", "dashboard"),
                          (" start --block", "`ray start --block`")):
        if marker in line:
            return label
    script = next((Path(a).name for a in cmdline[1:] if a.endswith(".py")), "")
    return f"{name} {script}".strip() or "?"


@dataclass
class Proc:
    node: str  # a Ray node's name, "direct" (the direct box's tree) or "-" (an API process)
    role: str
    pid: int
    rss: int
    uss: int  # unique set size: what the process alone holds (0 if unreadable)
    cores: str  # CPU affinity and nice value
    cpu_s: float  # user + system seconds so far


def uss(p: psutil.Process) -> int:
    try:
        return int(p.memory_full_info().uss)
    except psutil.Error:
        return 0


def tree(node: str, root_pid: int, *, children_only: bool = False,
         label: str | None = None, with_uss: bool = False) -> list[Proc]:
    """Live processes of a tree with their role, RSS, affinity and CPU time."""
    out = []
    try:
        root = psutil.Process(root_pid)
        procs = [*([] if children_only else [root]), *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return out
    for p in procs:
        try:
            t = p.cpu_times()
            out.append(Proc(node, label if label and p is root else role(p.name(), p.cmdline()),
                            p.pid, p.memory_info().rss, uss(p) if with_uss else 0,
                            f"{affinity(p.pid)} nice {p.nice()}", t.user + t.system))
        except psutil.Error:
            continue
    return out


def processes(fleet: Fleet, head_box: Box, direct: Box, with_uss: bool = False
              ) -> list[Proc]:
    """Every process of both systems (the bench client itself too, as node "-")."""
    u = {"with_uss": with_uss}
    procs = [p for name, node in fleet.nodes.items() for p in tree(name, node.pid, **u)]
    procs += tree("-", head_box.proc.pid, label="head box API (+ Ray driver)", **u)[:1]
    procs += tree("-", direct.proc.pid, label="direct box API", **u)[:1]
    procs += tree("direct", direct.proc.pid, children_only=True, **u)
    procs += tree("-", os.getpid(), label="bench client (this process)", **u)[:1]
    return procs


def cpu_used(before: list[Proc], after: list[Proc]) -> dict[tuple[str, str], float]:
    """CPU seconds each (node, role) used between two snapshots (pure)."""
    start = {p.pid: p.cpu_s for p in before}
    out: dict[tuple[str, str], float] = {}
    for p in after:
        key = (p.node, p.role)
        out[key] = out.get(key, 0.0) + p.cpu_s - start.get(p.pid, 0.0)
    return out


# --- the two systems ---------------------------------------------------------------------
@dataclass
class Target:
    name: str
    base_url: str
    key: str

    def client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.base_url + "/v1", api_key=self.key,
                                  max_retries=0, timeout=600)


def open_seat(box: Box) -> str:
    """Lift the admin seat's limits (it runs 4 at a time by default)."""
    headers = {"Authorization": f"Bearer {box.api_key}"}
    for s in httpx.get(box.base_url + "/admin/seats", headers=headers, timeout=30).json():
        httpx.patch(f"{box.base_url}/admin/seats/{s['id']}", headers=headers, timeout=30,
                    json={"max_concurrent": 0, "requests_per_minute": 0,
                          "tokens_per_day": 0}).raise_for_status()
    return box.api_key


def load_model(box: Box, timeout: float = 900) -> dict:
    headers = {"Authorization": f"Bearer {box.api_key}"}
    httpx.post(f"{box.base_url}/admin/models/{LLM}/load", headers=headers,
               timeout=timeout).raise_for_status()
    models = httpx.get(box.base_url + "/admin/models", headers=headers, timeout=30).json()
    return next(m for m in models if m["name"] == LLM)


class Fleet:
    """A Ray head and two one-core worker nodes on loopback, started and stopped here."""

    def __init__(self, root: Path, box_cores: dict[str, int], head_cores: set[int]) -> None:
        self.root = root
        self.short = Path(tempfile.mkdtemp(prefix="fb", dir="/tmp"))  # unix socket paths
        self.token = write_token(root / "join.token", new_token())
        self.port = free_ports(1, HEAD_IP)[0]
        self.nodes: dict[str, NodeProcess] = {}
        try:
            with pinned(head_cores):
                self._start("head", lambda: NodePlan(
                    "head", HEAD_IP, port=self.port, num_cpus=0,
                    object_store_bytes=OBJECT_STORE,
                    ports=own_ports(1, HEAD_IP, avoid={self.port})[0],
                    temp_dir=self.short / "h"))
            for box, core in box_cores.items():
                ip = BOX_IPS[box]
                with pinned({core}):
                    self._start(box, lambda ip=ip, box=box: NodePlan(
                        box, ip, head=f"{HEAD_IP}:{self.port}", num_cpus=1,
                        object_store_bytes=OBJECT_STORE, ports=own_ports(1, ip)[0],
                        temp_dir=self.short / box))
        except BaseException:
            self.stop()  # the nodes that did start
            raise

    def _start(self, name: str, plan: Callable[[], NodePlan], tries: int = 3) -> None:
        """Start a node, again on failure: Ray gives a raylet 30 s to register, which a
        heavily loaded machine can miss."""
        for attempt in range(1, tries + 1):
            node = NodeProcess(plan(), self.token, self.root / f"{name}.log",
                               extra_env={BOX_ENV: name, **SAME_NICE})
            try:
                node.wait_started(timeout=300)
            except NodeError as exc:
                node.stop(timeout=20)
                if attempt == tries:
                    raise
                print(f"node {name} did not start ({str(exc)[-200:]}); again", flush=True)
                continue
            self.nodes[name] = node
            return

    def stop(self) -> None:
        for name in [n for n in self.nodes if n != "head"] + ["head"]:
            if name in self.nodes:
                self.nodes[name].stop(timeout=20)
        shutil.rmtree(self.short, ignore_errors=True)


def start_head_box(fleet: Fleet, store: ModelStore, head_cores: set[int]) -> Box:
    data = fleet.root / "head-box"
    (data / "fleet").mkdir(parents=True)
    shutil.copy2(fleet.token, data / "fleet" / "join.token")
    with pinned(head_cores):
        return Box(data, store.root, env={
            "APPLIANCE_FLEET_ENABLED": "1", "APPLIANCE_FLEET_ADDRESS": HEAD_IP,
            "APPLIANCE_FLEET_PORT": str(fleet.port), "APPLIANCE_FLEET_BOX": "head",
            "APPLIANCE_FLEET_MIN_REPLICAS": "2", "APPLIANCE_FLEET_MAX_REPLICAS": "2",
            "APPLIANCE_FLEET_REPLICA_CPUS": "1", "APPLIANCE_FLEET_TARGET_ONGOING": str(SLOTS),
            "APPLIANCE_LLM_SLOTS": str(SLOTS), "APPLIANCE_LLM_CTX": str(CTX),
            "APPLIANCE_IDLE_UNLOAD_S": "0", "APPLIANCE_LOG_LEVEL": "warning"})


def start_direct_box(root: Path, store: ModelStore, head_cores: set[int]) -> Box:
    with pinned(head_cores):
        return Box(root / "direct-box", store.root, env={
            "APPLIANCE_LLM_THREADS": "1", "APPLIANCE_LLM_SLOTS": str(SLOTS),
            "APPLIANCE_LLM_CTX": str(CTX), "APPLIANCE_IDLE_UNLOAD_S": "0",
            "APPLIANCE_LOG_LEVEL": "warning"})


# --- workloads ---------------------------------------------------------------------------
@dataclass
class Answer:
    start: float
    first: float  # first content byte
    end: float  # last byte
    tokens: int
    node: str | None  # X-Appliance-Node: the box whose replica served it


async def ask(client: openai.AsyncOpenAI, messages: list[dict], max_tokens: int) -> Answer:
    """One streamed chat completion, timed from sending it to its last byte."""
    start = time.perf_counter()
    first = None
    raw = await client.chat.completions.with_raw_response.create(
        model=LLM, messages=messages, max_tokens=max_tokens, temperature=0, stream=True,
        stream_options={"include_usage": True})
    node = raw.headers.get("x-appliance-node")
    tokens = pieces = 0
    async for chunk in raw.parse():
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
        if chunk.choices and chunk.choices[0].delta.content:
            pieces += 1
            first = first or time.perf_counter()
    end = time.perf_counter()
    return Answer(start, first or end, end, tokens or pieces, node)


async def throughput(target: Target, clients: int, tokens: int
                     ) -> tuple[float, int, Counter]:
    """Aggregate tokens/s, tokens generated, and how many requests each box served."""
    client = target.client()
    try:
        done = await asyncio.gather(*(
            ask(client, [{"role": "user", "content":
                          f"{QUESTIONS[i % len(QUESTIONS)]} (request {next(_serial)})"}],
                tokens) for i in range(clients)))
    finally:
        await client.close()
    wall = max(a.end for a in done) - min(a.start for a in done)
    total = sum(a.tokens for a in done)
    return total / wall, total, Counter(a.node for a in done)


async def overhead(targets: list[Target], n: int) -> dict[str, list[Answer]]:
    clients = {t.name: t.client() for t in targets}
    out: dict[str, list[Answer]] = {t.name: [] for t in targets}
    try:
        for t in targets:  # warm: the prompt's prefix is cached on every replica after this
            for _ in range(4):
                await ask(clients[t.name], SAME_REQUEST, 8)
        for i in range(n):
            order = targets if i % 2 == 0 else targets[::-1]
            for t in order:
                out[t.name].append(await ask(clients[t.name], SAME_REQUEST, 8))
    finally:
        for c in clients.values():
            await c.close()
    return out


def memory_table(procs: list[Proc], nodes: list[str]) -> None:
    procs = [p for p in procs if "bench client" not in p.role]
    print("\nmemory (RSS counts shared pages in every process that maps them; USS is what "
          "the process alone holds)")
    print(f"  {'node':6s} {'process':30s} {'pid':>7s} {'RSS MiB':>8s} {'USS MiB':>8s}  cores")
    for p in sorted(procs, key=lambda p: (p.node, p.role)):
        print(f"  {p.node:6s} {p.role:30s} {p.pid:7d} {p.rss / 2**20:8.1f} "
              f"{p.uss / 2**20:8.1f}  {p.cores}")
    ray_only = [p for p in procs if p.node in nodes and "engine worker" not in p.role]
    print("  Ray's own processes per node (without engine workers), RSS / USS: " + ", ".join(
        f"{n} {sum(p.rss for p in ray_only if p.node == n) / 2**20:.0f} / "
        f"{sum(p.uss for p in ray_only if p.node == n) / 2**20:.0f} MiB" for n in nodes))


def cpu_table(used: dict[str, dict[tuple[str, str], float]], tokens: dict[str, float]
              ) -> None:
    """CPU seconds per 1,000 generated tokens, by process, in each system's own rounds."""
    print("\nCPU time per 1,000 generated tokens during each system's rounds (user+system; "
          "every process, both systems: what the other system's idle processes used shows "
          "too)")
    keys = sorted({k for u in used.values() for k in u})
    print(f"  {'node':6s} {'process':30s} {'fleet rounds':>13s} {'direct rounds':>14s}")
    for key in keys:
        row = [1000 * used[t].get(key, 0.0) / tokens[t] for t in ("fleet", "direct")]
        if max(row) >= 0.05:
            print(f"  {key[0]:6s} {key[1]:30s} {row[0]:13.2f} {row[1]:14.2f}")
    total = {t: 1000 * sum(used[t].values()) / tokens[t] for t in ("fleet", "direct")}
    print(f"  {'all':6s} {'':30s} {total['fleet']:13.2f} {total['direct']:14.2f}")


def request_cpu_table(used: dict[tuple[str, str], float], n: int) -> None:
    """CPU milliseconds per request pair of the overhead phase (one request to each
    system), by process: on a node with one core, what its replica uses delays its engine."""
    print(f"\nCPU time per request during the overhead phase ({n} requests to each system, "
          "alternating; user+system ms per request of each)")
    for key, sec in sorted(used.items(), key=lambda kv: -kv[1]):
        if 1000 * sec / n >= 0.1:
            print(f"  {key[0]:6s} {key[1]:30s} {1000 * sec / n:8.2f}")


def split_layout(procs: list[Proc], engine_core: int, other_core: int) -> None:
    """Move every engine worker (both systems') onto ``engine_core`` and every other process
    of both systems, this client included, onto ``other_core``: a one-request-at-a-time
    overhead measured where no serving code takes CPU from the engine that answers."""
    for p in procs:
        pin_process(p.pid, {engine_core} if "engine worker" in p.role else {other_core})
    pin_process(os.getpid(), {other_core})


def cpu_plan(args: argparse.Namespace) -> tuple[dict[str, int], set[int]]:
    cores = sorted(os.sched_getaffinity(0))
    box = [int(c) for c in args.box_cores.split(",")] if args.box_cores else cores[:2]
    if len(box) != 2:
        raise SystemExit("--box-cores takes two cores (one for node a, one for node b)")
    rest = [c for c in cores if c not in box]
    head = ({int(c) for c in args.head_cores.split(",")} if args.head_cores
            else set(rest) or set(cores))
    return {"a": box[0], "b": box[1]}, head


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--overhead", type=int, default=40, help="requests to each, alternating")
    ap.add_argument("--no-split", dest="split", action="store_false",
                    help="skip the second overhead phase (engines on one core, the rest on "
                    "another)")
    ap.add_argument("--box-cores", default="", help="cores of nodes a and b, e.g. 0,1")
    ap.add_argument("--head-cores", default="", help="cores of the API processes, the Ray "
                    "head and this client (default: the others; all when there are none)")
    args = ap.parse_args()
    box_cores, head_cores = cpu_plan(args)
    print(f"cores: node a {box_cores['a']}, node b {box_cores['b']} (direct box's engine "
          f"worker: {box_cores['a']}); head, API processes, client: "
          f"{','.join(map(str, sorted(head_cores)))}", flush=True)
    os.sched_setaffinity(0, head_cores)
    store = ModelStore(TEST_MODELS)
    fetch(store, [LLM], WHEEL_CACHE)
    root = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    t0 = time.monotonic()
    fleet = Fleet(root, box_cores, head_cores)
    head_box = direct = None
    try:
        head_box = start_head_box(fleet, store, head_cores)
        direct = start_direct_box(root, store, head_cores)
        load_model(head_box)
        worker = load_model(direct)
        pin_process(int(worker["worker_pid"]), {box_cores["a"]})
        targets = [Target("fleet", head_box.base_url, open_seat(head_box)),
                   Target("direct", direct.base_url, open_seat(direct))]
        asyncio.run(throughput(targets[0], 2, 8))  # the replicas are up and answering
        print(f"started in {time.monotonic() - t0:.0f}s", flush=True)
        memory_table(processes(fleet, head_box, direct, with_uss=True), list(fleet.nodes))
        rates: dict[str, list[float]] = {"fleet": [], "direct": []}
        used: dict[str, dict[tuple[str, str], float]] = {"fleet": {}, "direct": {}}
        generated = {"fleet": 0.0, "direct": 0.0}
        spread: Counter = Counter()
        for rnd in range(args.rounds):
            for t in (targets if rnd % 2 == 0 else targets[::-1]):
                before = processes(fleet, head_box, direct)
                rate, total, nodes = asyncio.run(throughput(t, args.clients, args.tokens))
                generated[t.name] += total
                for key, sec in cpu_used(before, processes(fleet, head_box, direct)).items():
                    used[t.name][key] = used[t.name].get(key, 0.0) + sec
                rates[t.name].append(rate)
                if t.name == "fleet":
                    spread += nodes
                print(f"round {rnd + 1} {t.name:6s} {rate:7.1f} tok/s  served by "
                      f"{dict(nodes)}", flush=True)
        before = processes(fleet, head_box, direct)
        lat = asyncio.run(overhead(targets, args.overhead))
        per_request = cpu_used(before, processes(fleet, head_box, direct))
        split = None
        if args.split and box_cores["a"] != box_cores["b"]:
            split_layout(processes(fleet, head_box, direct), box_cores["a"], box_cores["b"])
            split = asyncio.run(overhead(targets, args.overhead))
    finally:
        for box in (head_box, direct):
            if box is not None:
                box.stop()
        fleet.stop()
    def p50(name: str, part: str, lat: dict[str, list[Answer]] = lat) -> float:
        return 1000 * statistics.median(
            {"e2e": a.end - a.start, "ttft": a.first - a.start, "rest": a.end - a.first}[part]
            for a in lat[name])

    def added(part: str, lat: dict[str, list[Answer]] = lat) -> float:
        return p50("fleet", part, lat) - p50("direct", part, lat)

    extra = added("e2e")
    print(f"\nmachine: {os.cpu_count()} cores; {SLOTS} slots x {CTX}; 1 llama.cpp thread per "
          f"engine; {args.clients} clients x {args.tokens} tokens; {args.rounds} rounds; "
          f"medians; fleet requests served by {dict(spread)}")
    if args.rounds:  # --rounds 0: the overhead only
        fleet_rate, direct_rate = (statistics.median(rates[k]) for k in ("fleet", "direct"))
        ratio = fleet_rate / direct_rate
        print(f"  throughput  fleet (2 nodes x 1 core) {fleet_rate:7.1f} tok/s   direct (1 core) "
              f"{direct_rate:7.1f} tok/s   ratio {ratio:.2f}  target >= 1.7  "
              f"{'MET' if ratio >= 1.7 else 'MISSED'}")
    print(f"  overhead    p50 through the fleet head {p50('fleet', 'e2e'):.1f} ms, direct "
          f"{p50('direct', 'e2e'):.1f} ms ({args.overhead} each, 8 tokens, streamed, send to "
          f"last byte): {extra:+.1f} ms  target <= 5  {'MET' if extra <= 5 else 'MISSED'}")
    print(f"              of which up to the first token (routing, opening the stream, "
          f"the first event) {added('ttft'):+.1f} ms "
          f"(p50 {p50('fleet', 'ttft'):.1f} vs {p50('direct', 'ttft'):.1f}); the 7 tokens "
          f"after it {added('rest'):+.1f} ms "
          f"(p50 {p50('fleet', 'rest'):.1f} vs {p50('direct', 'rest'):.1f})")
    if split is not None:
        print(f"  split       engines on core {box_cores['a']}, everything else (APIs, Ray, "
              f"replicas, client) on core {box_cores['b']}, as on boxes with a core to spare: "
              f"fleet {p50('fleet', 'e2e', split):.1f} ms, direct "
              f"{p50('direct', 'e2e', split):.1f} ms: {added('e2e', split):+.1f} ms (first "
              f"token {added('ttft', split):+.1f}, the 7 after {added('rest', split):+.1f})")
    request_cpu_table(per_request, args.overhead)
    if args.rounds:
        cpu_table(used, generated)
    print(f"total {time.monotonic() - t0:.0f}s")


if __name__ == "__main__":
    main()

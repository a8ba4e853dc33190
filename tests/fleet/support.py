"""A loopback fleet for tests: a head and worker boxes as real ``ray start`` nodes.

Ray swaps 127.0.0.1 for the host's routable address, so the nodes take other loopback
addresses (127.0.0.2 head, 127.0.0.3... boxes): still loopback only, and each node binds
its own. Every node runs in its own process group and is stopped by the fixture.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from fleet.node import BOX_ENV, NodePlan, NodeProcess, free_ports, own_ports
from fleet.token import new_token, write_token
from tests.conftest import ROOT, Box, linked_models

HEAD_IP = "127.0.0.2"
BOX_IPS = {"a": "127.0.0.3", "b": "127.0.0.4", "c": "127.0.0.5"}
OBJECT_STORE = 80 << 20


@dataclass
class LoopbackFleet:
    root: Path
    token: Path = field(init=False)
    port: int = field(init=False)
    head: NodeProcess | None = None
    boxes: dict[str, NodeProcess] = field(default_factory=dict)
    head_ip: str = HEAD_IP  # another module may take other loopback addresses
    box_ips: dict[str, str] = field(default_factory=lambda: dict(BOX_IPS))

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        # Ray's unix sockets live under its temp dir: keep the path short (107 bytes max)
        self.short = Path(tempfile.mkdtemp(prefix="rf", dir="/tmp"))
        self.token = write_token(self.root / "join.token", new_token())
        self.port = free_ports(1, self.head_ip)[0]

    @property
    def address(self) -> str:
        return f"{self.head_ip}:{self.port}"

    def start_head(self) -> None:
        plan = NodePlan("head", self.head_ip, port=self.port, num_cpus=0,
                        object_store_bytes=OBJECT_STORE,
                        ports=own_ports(1, self.head_ip, avoid={self.port})[0],
                        temp_dir=self.short / "h")
        self.head = NodeProcess(plan, self.token, self.root / "head.log",
                                extra_env={BOX_ENV: "head"})
        self.head.wait_started()

    def join(self, box: str, token: Path | None = None, cpus: int = 1,
             gpus: int | None = None) -> NodeProcess:
        ip = self.box_ips[box]
        plan = NodePlan(box, ip, head=self.address, num_cpus=cpus, num_gpus=gpus,
                        object_store_bytes=OBJECT_STORE, ports=own_ports(1, ip)[0],
                        temp_dir=self.short / box)
        node = NodeProcess(plan, token or self.token, self.root / f"{box}.log",
                           extra_env={BOX_ENV: box})
        self.boxes[box] = node
        node.wait_started()
        return node

    def stop(self) -> None:
        for node in list(self.boxes.values()):
            node.stop(timeout=15)
        if self.head is not None:
            self.head.stop(timeout=15)
        shutil.rmtree(self.short, ignore_errors=True)


def sse_stream(base: str, key: str, model: str, max_tokens: int = 32,
               prompt: str = "Count from one to fifty in words.",
               timeout: float = 120.0) -> dict:
    """One streamed chat completion: its status, node header, text and any error event."""
    out: dict = {"status": None, "node": None, "text": "", "error": None, "done": False}
    body = {"model": model, "stream": True, "max_tokens": max_tokens, "temperature": 0,
            "messages": [{"role": "user", "content": prompt}]}
    with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=timeout,
                      headers={"Authorization": f"Bearer {key}"}) as r:
        out["status"] = r.status_code
        out["node"] = r.headers.get("x-appliance-node")
        out["retry_after"] = r.headers.get("retry-after")
        if r.status_code != 200:
            r.read()
            out["error"] = r.json().get("error")
            return out
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                out["done"] = True
                break
            obj = json.loads(data)
            if "error" in obj:
                out["error"] = obj["error"]
                break
            for choice in obj.get("choices", []):
                out["text"] += choice.get("delta", {}).get("content") or ""
    return out


def usage_rows(db: Path, route: str = "/v1/chat/completions") -> list[dict]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute(
            "select * from usage where route = ? order by id", (route,))]
    finally:
        con.close()


def wait_for(predicate, timeout: float, every: float = 0.5) -> Iterator[None] | bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return False


@contextmanager
def running_fleet(root: Path, boxes: tuple[str, ...] = ("a", "b"), **where: Any
                  ) -> Iterator[LoopbackFleet]:
    """A head and ``boxes`` joined (``where``: other loopback addresses), all stopped after."""
    f = LoopbackFleet(root, **where)
    try:
        f.start_head()
        for box in boxes:
            f.join(box)
        yield f
    finally:
        f.stop()


def fleet_head_box(fleet: LoopbackFleet, store: Path, tmp: Path, env: dict[str, str],
                   add_packs: Callable[[Path], None] | None = None) -> Box:
    """The real box as the fleet's ingress: the fleet's join token in its data dir, a linked
    copy of the test model store (``add_packs`` may add packs to it), fleet mode on."""
    data = tmp / "data"
    (data / "fleet").mkdir(parents=True)
    shutil.copy2(fleet.token, data / "fleet" / "join.token")
    models = linked_models(store, tmp / "models")
    if add_packs is not None:
        add_packs(models)
    return Box(data, models, env={
        "APPLIANCE_FLEET_ENABLED": "1", "APPLIANCE_FLEET_ADDRESS": fleet.head_ip,
        "APPLIANCE_FLEET_PORT": str(fleet.port), **env})


def appliance(data: Path, *args: str) -> subprocess.CompletedProcess:
    """``appliance --data-dir DATA fleet ARGS`` as an admin types it."""
    env = {**os.environ, "APPLIANCE_CONFIG": os.devnull}
    return subprocess.run([sys.executable, "-m", "appliance.cli", "--data-dir", str(data),
                           "fleet", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)

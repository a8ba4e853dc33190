"""This box's Ray node: the ``ray start`` command line (pure) and the process that runs it.

A head binds the address in the configuration (loopback unless the admin says otherwise,
never 0.0.0.0 by default); a worker node joins a head. Both run with Ray's token
authentication on (``RAY_AUTH_MODE=token``), reading the fleet token from a 0600 file, and
advertise this box's cores, memory, GPUs and a custom resource ``box:<name>`` that
placement and ``fleet status`` use. The node runs as ``ray start --block`` in its own
process group, so ``leave`` (and a test) stops exactly this box's node, never others.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from fleet.errors import NodeError

#: Ray keeps nodes on loopback when this is "0" (it otherwise swaps 127.0.0.1 for the
#: host's routable address); set for a head bound to loopback and in tests.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
#: Serve's controller (on the head) runs its control loop every 0.25 s instead of 0.1 s:
#: about 4 % of a core less on the head; autoscaling delays are whole seconds anyway.
SERVE_ENV = {"RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.25"}
BOX_RESOURCE_PREFIX = "box:"
#: Set in a node's environment by ``fleet init``/``join``; its replicas inherit it.
BOX_ENV = "APPLIANCE_FLEET_BOX"
STARTED_MARK = "Ray runtime started"
PORT_FLAGS = ("node-manager-port", "object-manager-port", "dashboard-agent-listen-port",
              "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port")


@dataclass(frozen=True)
class NodePlan:
    """Everything ``ray start`` needs for this box's node."""

    box: str
    address: str  # this node's IP (the head's bind address for a head)
    head: str | None = None  # "ip:port" of the head to join; None: this is the head
    port: int = 6379  # the head's GCS port
    num_cpus: int | None = None
    num_gpus: int | None = None
    memory_bytes: int | None = None
    object_store_bytes: int = 200 << 20
    ports: dict[str, int] = field(default_factory=dict)  # flag name -> port (0: Ray picks)
    temp_dir: Path | None = None  # Ray's sockets and logs of this node

    @property
    def is_head(self) -> bool:
        return self.head is None

    @property
    def resources(self) -> dict[str, float]:
        return {box_resource(self.box): 1.0}


def box_resource(box: str) -> str:
    """The custom resource that names a box (one unit per box)."""
    return BOX_RESOURCE_PREFIX + box


def is_loopback(address: str) -> bool:
    return address in ("127.0.0.1", "localhost", "::1")


def command(plan: NodePlan, ray: str = "ray") -> list[str]:
    """The ``ray start`` command line of ``plan``."""
    if plan.address in ("0.0.0.0", "::", ""):
        raise NodeError("a fleet node binds one address; 0.0.0.0 is refused (set fleet_address)")
    cmd = [ray, "start", "--block", "--disable-usage-stats", f"--node-ip-address={plan.address}",
           f"--object-store-memory={plan.object_store_bytes}",
           f"--resources={json.dumps(plan.resources)}",
           # the log monitor forwards worker logs to drivers; the head's driver takes none
           # (``log_to_driver=False``), and the logs stay in the node's session files
           "--include-log-monitor=false"]
    if plan.is_head:
        cmd += ["--head", f"--port={plan.port}", "--include-dashboard=false"]
    else:
        cmd.append(f"--address={plan.head}")
    if plan.temp_dir is not None:  # its own sockets and logs (several nodes on one host)
        cmd.append(f"--temp-dir={plan.temp_dir}")
    if plan.num_cpus is not None:
        cmd.append(f"--num-cpus={plan.num_cpus}")
    if plan.num_gpus is not None:
        cmd.append(f"--num-gpus={plan.num_gpus}")
    if plan.memory_bytes is not None:
        cmd.append(f"--memory={plan.memory_bytes}")
    for flag in PORT_FLAGS:
        if plan.ports.get(flag):
            cmd.append(f"--{flag}={plan.ports[flag]}")
    return cmd


def environment(token_path: Path, address: str) -> dict[str, str]:
    """Environment of a node (and of any driver): token auth on, from ``token_path``."""
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path),
           "RAY_USAGE_STATS_ENABLED": "0", **SERVE_ENV}
    if is_loopback(address):
        env.update(LOOPBACK_ENV)
    return env


def free_ports(n: int, address: str = "127.0.0.1", avoid: Collection[int] = ()) -> list[int]:
    """``n`` distinct free TCP ports, none of them in ``avoid`` (several nodes on one machine
    need their own, and a node's services must not be handed the port its GCS was given)."""
    socks, out = [], []
    try:
        while len(out) < n:
            s = socket.socket()
            s.bind((address, 0))
            socks.append(s)  # held until the end, so a skipped port is not drawn again
            port = int(s.getsockname()[1])
            if port not in avoid:
                out.append(port)
    finally:
        for s in socks:
            s.close()
    return out


def own_ports(n_nodes: int, address: str = "127.0.0.1",
              avoid: Collection[int] = ()) -> list[dict[str, int]]:
    """Distinct ports for each per-node service of ``n_nodes`` nodes on one host (taken in
    one go, so no two nodes are handed the same just-released port), none in ``avoid`` (pass
    the head's GCS port: it was free when drawn, so it can be drawn again)."""
    ports = free_ports(len(PORT_FLAGS) * n_nodes, address, avoid)
    k = len(PORT_FLAGS)
    return [dict(zip(PORT_FLAGS, ports[i * k:(i + 1) * k], strict=True))
            for i in range(n_nodes)]


def ray_executable() -> str:
    """The ``ray`` script of this interpreter's environment."""
    here = Path(sys.executable).parent / "ray"
    found = str(here) if here.exists() else shutil.which("ray")
    if not found:
        raise NodeError("the ray command is missing: install the fleet extra (.[fleet])")
    return found


class NodeProcess:
    """A running ``ray start --block`` in its own process group."""

    def __init__(self, plan: NodePlan, token_path: Path, log_path: Path,
                 extra_env: dict[str, str] | None = None) -> None:
        self.plan = plan
        self.log_path = log_path
        env = {**os.environ, **environment(token_path, plan.address), **(extra_env or {})}
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("ab")
        self._log_start = self._log.tell()  # an earlier run of this box's node wrote above
        self.proc = subprocess.Popen(command(plan, ray_executable()), env=env,
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.pid = self.proc.pid

    def wait_started(self, timeout: float = 120.0) -> None:
        """Block until Ray says the node runs; NodeError (with the log's tail) if it exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.log_path.open("rb") as f:
                f.seek(self._log_start)
                text = f.read().decode(errors="replace")
            if STARTED_MARK in text:
                return
            if self.proc.poll() is not None:
                raise NodeError(f"ray start exited ({self.proc.returncode}): {text[-2000:]}")
            time.sleep(0.2)
        self.stop()
        raise NodeError(f"the Ray node did not start in {timeout:.0f}s")

    def kill(self) -> None:
        """Pull the plug: SIGKILL every process of the node at once."""
        _signal_group(self.pid, signal.SIGKILL)
        self._reap(10)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the node's processes (SIGTERM, then SIGKILL after ``timeout``)."""
        _signal_group(self.pid, signal.SIGTERM)
        if not self._reap(timeout):
            _signal_group(self.pid, signal.SIGKILL)
            self._reap(10)

    def _reap(self, timeout: float) -> bool:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        # the raylet and its workers may outlive `ray start` for a moment
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _group_alive(self.pid):
            time.sleep(0.1)
        if _group_alive(self.pid):
            _signal_group(self.pid, signal.SIGKILL)
        self._log.close()
        return True


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

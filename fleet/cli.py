"""``appliance fleet …``: form a fleet (init, join), look at it (status), leave it; and
register remote endpoints for cloud overflow (add-remote, remove-remote, remotes).

Plain Python at import; Ray runs as ``ray start`` child processes (``fleet.node``), so a
box without the fleet extra still refuses a join with a clear message.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from appliance.settings import Settings
from fleet import boxapi, remotes
from fleet.admission import ask_head, make_join_request
from fleet.app import TOKEN_FILE, box_name
from fleet.errors import FleetError, JoinRefusedError, NodeError
from fleet.node import BOX_ENV, NodePlan, NodeProcess, is_loopback, own_ports
from fleet.token import new_token, read_token, write_token

PID_FILE = "node.json"


def add_parser(sub: Any) -> None:
    """Register ``fleet`` and its actions on the ``appliance`` parser."""
    f = sub.add_parser("fleet", help="several boxes serving as one (needs .[fleet])")
    fsub = f.add_subparsers(dest="action", required=True)
    i = fsub.add_parser("init", help="start this box as the fleet head; write the join token")
    i.add_argument("--address", help="IP to bind (default: fleet_address in the config)")
    i.add_argument("--port", type=int, help="head port (default: fleet_port)")
    j = fsub.add_parser("join", help="join this box to a fleet head as a worker node")
    j.add_argument("head", help="HEAD_IP:PORT")
    j.add_argument("--token", type=Path, help="the head's join token file (0600)")
    j.add_argument("--address", help="this box's IP on the fleet network")
    j.add_argument("--api", help="the head's API, which checks the fleet licence "
                                 "(default: http://HEAD_IP:<port in the config>)")
    st = fsub.add_parser("status", help="nodes, their health and replicas (asks the head's API)")
    st.add_argument("--api", help="the head's API (default: http://HOST:PORT from the config)")
    lv = fsub.add_parser("leave", help="drain this box's node, then stop it")
    lv.add_argument("--timeout", type=float, default=120.0,
                    help="seconds in-flight requests get to finish")
    remotes.add_parsers(fsub)
    for p in (i, j):
        p.add_argument("--box", help="this box's name in the fleet (default: host name)")
        p.add_argument("--cpus", type=int, help="cores to offer (default: all)")
        p.add_argument("--gpus", type=int, help="GPUs to offer (default: all)")
        p.add_argument("--temp-dir", type=Path,
                       help="Ray's sockets and logs (short path; one per node on a host)")
        p.add_argument("--own-ports", action="store_true",
                       help="pick free ports for the per-node services (a second node on "
                            "the same machine: tests and demos)")


def run(args: argparse.Namespace, settings: Settings, echo: Any) -> int:
    action = args.action
    if action == "init":
        return _init(args, settings, echo)
    if action == "join":
        return _join(args, settings, echo)
    if action == "status":
        return _status(settings, echo, args.api)
    if action == "leave":
        return _leave(args, settings, echo)
    if action in ("add-remote", "remove-remote", "remotes"):
        return remotes.run(args, settings, echo)
    raise FleetError(f"unknown fleet action {action}")


def _check_address(address: str | None) -> str:
    if not address:
        raise FleetError("say which address the fleet uses: --address IP or fleet_address")
    if address in ("0.0.0.0", "::"):
        raise FleetError("a fleet node binds one address, never 0.0.0.0")
    if is_loopback(address):
        raise FleetError("Ray replaces 127.0.0.1 with this host's routable address; give "
                         "the LAN address, or 127.0.0.2 for a fleet on one machine")
    return address


def _local(args: argparse.Namespace, address: str, gcs_port: int | None = None
           ) -> dict[str, Any]:
    avoid = {gcs_port} if gcs_port else set()
    return {"temp_dir": args.temp_dir,
            "ports": own_ports(1, address, avoid)[0] if args.own_ports else {}}


def _start(plan: NodePlan, token: Path, settings: Settings, echo: Any) -> NodeProcess:
    fleet_dir = settings.fleet_dir
    if (fleet_dir / PID_FILE).is_file() and _alive(_node_record(settings)):
        raise NodeError("this box already runs a fleet node; `appliance fleet leave` first")
    node = NodeProcess(plan, token, fleet_dir / "node.log", extra_env={BOX_ENV: plan.box})
    (fleet_dir / PID_FILE).write_text(json.dumps({"pgid": node.pid, "box": plan.box,
                                                 "head": plan.head, "address": plan.address}))
    try:
        node.wait_started()
    except NodeError as exc:
        (fleet_dir / PID_FILE).unlink(missing_ok=True)
        if "Authentication" in str(exc) or "InvalidAuthToken" in str(exc):
            raise JoinRefusedError("the head refused this box's token") from exc
        raise
    return node


def _init(args: argparse.Namespace, settings: Settings, echo: Any) -> int:
    address = _check_address(args.address or settings.fleet_address)
    port = args.port or settings.fleet_port
    token = settings.fleet_dir / TOKEN_FILE
    if not token.is_file():
        write_token(token, new_token())
    read_token(token)  # refuses a token file others can read
    box = args.box or box_name(settings)
    plan = NodePlan(box, address, port=port, num_cpus=args.cpus, num_gpus=args.gpus,
                    object_store_bytes=settings.fleet_object_store_mb << 20,
                    **_local(args, address, port))
    _start(plan, token, settings, echo)
    echo(f"fleet head {box} runs on {address}:{port}; join token: {token} (mode 0600)")
    echo(f"on another box: appliance fleet join {address}:{port} --token FILE")
    echo("then set fleet_enabled = true, fleet_address = "
         f"\"{address}\" and fleet_port = {port} here and restart `appliance serve`")
    return 0


def _join(args: argparse.Namespace, settings: Settings, echo: Any) -> int:
    secret = read_token(args.token)
    address = _check_address(args.address or settings.fleet_address)
    box = args.box or box_name(settings)
    # the licence first: the head's API admits this box (signed by its own key) or says why not
    api = args.api or f"http://{args.head.rsplit(':', 1)[0]}:{settings.port}"
    answer = ask_head(api, secret, make_join_request(settings.data_dir, box))
    echo(f"the head admits {box} under licence {answer['licence_id']} "
         f"({answer['admitted']}; fingerprint: {answer['fingerprint']})")
    token = write_token(settings.fleet_dir / TOKEN_FILE, secret)
    plan = NodePlan(box, address, head=args.head, num_cpus=args.cpus, num_gpus=args.gpus,
                    object_store_bytes=settings.fleet_object_store_mb << 20,
                    **_local(args, address))
    _start(plan, token, settings, echo)
    echo(f"box {box} joined the fleet at {args.head}")
    return 0


def _status(settings: Settings, echo: Any, api: str | None = None) -> int:
    echo(json.dumps(boxapi.call(settings, boxapi.base_url(settings, api), "GET",
                                "/admin/fleet"), indent=2))
    return 0


def _node_record(settings: Settings) -> dict[str, Any]:
    try:
        return json.loads((settings.fleet_dir / PID_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _alive(record: dict[str, Any]) -> bool:
    pgid = record.get("pgid")
    if not pgid:
        return False
    try:
        os.killpg(int(pgid), 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _leave(args: argparse.Namespace, settings: Settings, echo: Any) -> int:
    """Drain this box's node (Ray stops placing work there and Serve moves its replicas),
    give in-flight requests ``--timeout`` seconds, then stop the node."""
    record = _node_record(settings)
    if not _alive(record):
        (settings.fleet_dir / PID_FILE).unlink(missing_ok=True)
        echo("this box runs no fleet node")
        return 0
    head = record.get("head")
    if head:  # a worker: ask the head to drain it first
        _drain(head, record["box"], settings, args.timeout, echo)
    pgid = int(record["pgid"])
    os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _alive(record):
        time.sleep(0.2)
    if _alive(record):
        os.killpg(pgid, signal.SIGKILL)
    (settings.fleet_dir / PID_FILE).unlink(missing_ok=True)
    echo(f"box {record.get('box')} left the fleet")
    return 0


def _drain(head: str, box: str, settings: Settings, timeout: float, echo: Any) -> None:
    import subprocess

    from fleet.node import environment, ray_executable

    env = {**os.environ, **environment(settings.fleet_dir / TOKEN_FILE, head.split(":")[0])}
    code = ("import ray, sys\n"
            f"ray.init(address={head!r}, logging_level='error', log_to_driver=False)\n"
            f"ids = [n['NodeID'] for n in ray.nodes() if n['Alive'] and "
            f"'box:' + {box!r} in n.get('Resources', {{}})]\n"
            "print(ids[0] if ids else '')\n")
    python = str(Path(ray_executable()).with_name("python"))
    found = subprocess.run([python, "-c", code], env=env, capture_output=True, text=True,
                           timeout=120)
    node_id = found.stdout.strip().splitlines()[-1] if found.stdout.strip() else ""
    if not node_id:
        echo("the head does not list this box; stopping it without a drain")
        return
    ray = ray_executable()
    subprocess.run([ray, "drain-node", f"--address={head}", f"--node-id={node_id}",
                    "--reason=DRAIN_NODE_REASON_PREEMPTION", "--reason-message=fleet leave",
                    f"--deadline-remaining-seconds={int(timeout)}"], env=env, check=False,
                   timeout=120, input="y\n", text=True)
    echo(f"draining {box}: up to {timeout:.0f}s for requests in flight")
    deadline = time.monotonic() + timeout
    check = ("import ray\n"
             f"ray.init(address={head!r}, logging_level='error', log_to_driver=False)\n"
             "from ray._private.state import state\n"
             "acts = state.actor_table(None, actor_state_name='ALIVE').values()\n"
             "print(sum(1 for a in acts if (a.get('Name') or '').startswith('SERVE_REPLICA')"
             f" and a['Address']['NodeID'] == {node_id!r}))\n")
    while time.monotonic() < deadline:  # Serve starts replacements, then stops these
        r = subprocess.run([python, "-c", check], env=env, capture_output=True, text=True,
                           timeout=120)
        if r.stdout.strip().endswith("0"):
            echo(f"{box} holds no replicas any more")
            return
        time.sleep(2.0)
    echo(f"{box} still holds replicas after {timeout:.0f}s; stopping it anyway")

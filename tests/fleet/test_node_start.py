"""``NodeProcess.wait_started`` reads only what this start wrote to the node's log (the log
is appended to: a box that leaves and joins again keeps the earlier run's lines). No Ray:
a shell command stands in for ``ray start``."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet import node
from fleet.errors import NodeError
from fleet.node import STARTED_MARK, NodePlan, NodeProcess


def _fake_ray(monkeypatch: pytest.MonkeyPatch, script: str) -> None:
    monkeypatch.setattr(node, "ray_executable", lambda: "ray")
    monkeypatch.setattr(node, "command", lambda plan, ray: ["sh", "-c", script])


def test_an_earlier_runs_start_line_does_not_count(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "a.log"
    log.write_text(f"yesterday\n{STARTED_MARK}.\n")
    _fake_ray(monkeypatch, "sleep 30")  # still starting
    proc = NodeProcess(NodePlan("a", "127.0.0.9"), tmp_path / "token", log)
    with pytest.raises(NodeError, match="did not start"):
        proc.wait_started(timeout=1.0)
    assert proc.proc.poll() is not None  # the failed start was stopped


def test_this_runs_start_line_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "a.log"
    log.write_text(f"yesterday\n{STARTED_MARK}.\n")
    _fake_ray(monkeypatch, f"sleep 0.3; echo '{STARTED_MARK}.'; sleep 30")
    proc = NodeProcess(NodePlan("a", "127.0.0.9"), tmp_path / "token", log)
    try:
        proc.wait_started(timeout=20.0)
    finally:
        proc.stop(timeout=5)
    assert log.read_text().count(STARTED_MARK) == 2


def test_a_nodes_own_ports_never_include_the_port_its_gcs_was_given() -> None:
    """CI once handed the head's GCS port to its object manager too (both drawn free,
    released, drawn again) and `ray start` refused: the drawn ports must skip it."""
    for _ in range(50):
        gcs = node.free_ports(1)[0]
        ports = node.own_ports(2, avoid={gcs})
        drawn = [p for plan in ports for p in plan.values()]
        assert gcs not in drawn
        assert len(set(drawn)) == len(drawn) == 2 * len(node.PORT_FLAGS)


def test_free_ports_skips_every_avoided_port() -> None:
    first = node.free_ports(20)
    again = node.free_ports(20, avoid=set(first))
    assert not set(first) & set(again)


def test_nodes_start_without_log_forwarding_and_with_a_calmer_serve_controller(
        tmp_path: Path) -> None:
    head = node.command(NodePlan(box="h", address="10.0.0.5", port=6380))
    worker = node.command(NodePlan(box="a", address="10.0.0.6", head="10.0.0.5:6380"))
    for cmd in (head, worker):
        assert "--include-log-monitor=false" in cmd
    assert "--head" in head and "--address=10.0.0.5:6380" in worker
    env = node.environment(tmp_path / "join.token", "10.0.0.5")
    assert env["RAY_SERVE_CONTROL_LOOP_INTERVAL_S"] == "0.25"
    assert env["RAY_AUTH_MODE"] == "token"

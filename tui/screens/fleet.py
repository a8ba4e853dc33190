"""The fleet (``GET /admin/fleet``): nodes and their health, the replicas on each and their
load, each model's replicas; or, on a box that is not a fleet head, a plain line saying so."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Label

from tui import format as fmt
from tui.client import Fleet
from tui.screens.base import BoxScreen

NOT_A_HEAD = ("This box is not a fleet head: fleet mode is off here. A fleet is formed "
              "with `appliance fleet init` on its head (README, Fleet).")


class FleetScreen(BoxScreen):
    """Three tables (nodes, replicas, models), refreshed while shown."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("r", "reload", "Refresh")]

    def compose_body(self) -> ComposeResult:
        yield Label("Fleet", classes="section", id="fleet-title")
        yield Label("", id="fleet-note")
        yield Label("Nodes", classes="section fleet-part")
        yield DataTable(id="nodes", cursor_type="row", zebra_stripes=True,
                        classes="fleet-part")
        yield Label("Replicas", classes="section fleet-part")
        yield DataTable(id="replicas", cursor_type="row", zebra_stripes=True,
                        classes="fleet-part")
        yield Label("Models", classes="section fleet-part")
        yield DataTable(id="fleet-models", cursor_type="row", zebra_stripes=True,
                        classes="fleet-part")

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one("#nodes", DataTable).add_columns(
            "box", "address", "health", "role", "cores", "GPUs", "memory", "replicas",
            "in flight")
        self.query_one("#replicas", DataTable).add_columns("model", "replica", "box",
                                                           "in flight")
        self.query_one("#fleet-models", DataTable).add_columns("model", "status", "running",
                                                               "replica states")
        self.follow(max(3.0, self.admin.refresh_s * 2))

    def reload(self) -> None:
        self.call_box(self.client.fleet, self.show)

    def action_reload(self) -> None:
        self.reload()

    def show(self, fleet: Fleet | None) -> None:
        """Fill the tables, or say plainly that this box is not a fleet head."""
        note = self.query_one("#fleet-note", Label)
        for part in self.query(".fleet-part"):
            part.display = fleet is not None
        if fleet is None:
            note.update(NOT_A_HEAD)
            return
        nodes = fleet.get("nodes") or []
        alive = sum(1 for n in nodes if n.get("alive"))
        note.update(f"Head at {fleet.get('address', '?')}: {len(nodes)} node(s), "
                    f"{alive} alive, {len(nodes) - alive} dead")
        boxes = {n["node_id"]: n.get("box") or n["node_id"][:12] for n in nodes}
        table = self.query_one("#nodes", DataTable)
        table.clear()
        for n in sorted(nodes, key=lambda n: (not n.get("head"), n.get("box") or "")):
            table.add_row(boxes[n["node_id"]], n.get("address") or "-",
                          "alive" if n.get("alive") else "DEAD",
                          "head" if n.get("head") else "worker", f"{n.get('cpus') or 0:g}",
                          f"{n.get('gpus') or 0:g}", fmt.size(n.get("memory_bytes")),
                          str(len(n.get("replicas") or [])), fmt.count(n.get("load")))
        table = self.query_one("#replicas", DataTable)
        table.clear()
        for n in nodes:
            for r in n.get("replicas") or []:
                table.add_row(r["model"], r["replica"], boxes[n["node_id"]],
                              fmt.count(r.get("ongoing")))
        table = self.query_one("#fleet-models", DataTable)
        table.clear()
        for name, m in sorted((fleet.get("models") or {}).items()):
            states = ", ".join(f"{k.lower()} {v}" for k, v in
                               sorted((m.get("replica_states") or {}).items()))
            table.add_row(name, m.get("status", "?"), str(m.get("running", 0)), states or "-")

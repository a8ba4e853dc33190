"""Live overview: throughput, queue, latency, machine load, models and licence."""

from __future__ import annotations

import logging

from textual.app import ComposeResult
from textual.containers import Grid, Horizontal
from textual.widgets import DataTable, Label

from tui import format as fmt
from tui.client import Status
from tui.screens.base import BoxScreen
from tui.widgets.stat_tile import StatTile

log = logging.getLogger(__name__)

TILES = [
    ("requests", "Requests/s", True),
    ("tokens", "Tokens/s", True),
    ("images", "Images/s", True),
    ("p95", "p95 latency", True),
    ("queue", "Queue depth", True),
    ("slots", "Active slots", False),
    ("cpu", "CPU", True),
    ("ram", "RAM", False),
]


def _memory(model: dict) -> str:
    """Memory a loaded model takes (``bytes``), '-' when unloaded."""
    return fmt.size(model.get("bytes")) if model.get("bytes") else "-"


class DashboardScreen(BoxScreen):
    """Fed by the app's ``status`` poll (every refresh interval)."""

    _last_problem = ""

    def compose_body(self) -> ComposeResult:
        with Horizontal(id="dash-top"):
            yield Label("Licence: …", id="dash-licence")
            yield Label("", id="dash-version")
        with Grid(id="dash-tiles"):
            for key, label, trend in TILES:
                yield StatTile(label, trend=trend, id=f"tile-{key}")
        yield Label("GPU: -", id="dash-gpu")
        yield Label("Models", classes="section")
        yield DataTable(id="dash-models", cursor_type="none", zebra_stripes=True)
        yield Label("", id="dash-engines")  # fallbacks and worker restarts, when any

    def on_mount(self) -> None:
        super().on_mount()
        table = self.query_one("#dash-models", DataTable)
        table.add_columns("name", "state", "provider", "engine", "quant", "on disk",
                          "memory", "busy")
        self.watch(self.app, "status", self._show_safely, init=True)

    def _show_safely(self, status: Status | None) -> None:
        try:
            self.show(status)
        except Exception as exc:  # a status not shaped as documented: say so once
            message = f"{type(exc).__name__}: {exc}"
            if message != self._last_problem:
                self._last_problem = message
                log.exception("cannot show the status")
                self.notify(message, title="Unexpected status answer", severity="error")

    def tile(self, key: str) -> StatTile:
        return self.query_one(f"#tile-{key}", StatTile)

    def show(self, status: Status | None) -> None:
        """Render one status answer."""
        if status is None:
            return
        licence = status.get("licence") or {}
        state = str(licence.get("state", "missing"))
        badge = self.query_one("#dash-licence", Label)
        badge.update(f"Licence: {fmt.licence_line(licence)}")
        badge.set_classes(f"licence-{state}")
        self.query_one("#dash-version", Label).update(
            f"version {status.get('version', '?')} · up {fmt.duration(status.get('uptime_s'))}")
        s = status.get("stats") or {}
        for key, rate_key, total_key in (("requests", "requests_per_s", "requests_total"),
                                          ("tokens", "tokens_per_s", "tokens_out_total"),
                                          ("images", "images_per_s", "images_total")):
            per_s = float(s.get(rate_key) or 0.0)
            self.tile(key).push(f"{per_s:.1f}/s · {fmt.count(s.get(total_key))} total", per_s)
        self.tile("p95").push(fmt.latency(s.get("p95_latency_s")), s.get("p95_latency_s") or 0.0)
        self.tile("queue").push(fmt.count(s.get("queue_depth")), s.get("queue_depth") or 0)
        self.tile("slots").push(fmt.count(s.get("active_slots")))
        self.tile("cpu").push(f"{s.get('cpu_percent', 0.0):.0f} %", s.get("cpu_percent", 0.0))
        self.tile("ram").push(f"{fmt.size(s.get('ram_used_bytes'))} of "
                              f"{fmt.size(s.get('ram_total_bytes'))}")
        gpus = s.get("gpu") or []
        self.query_one("#dash-gpu", Label).update("GPU: " + ("; ".join(gpus) or "none"))
        table = self.query_one("#dash-models", DataTable)
        table.clear()
        for m in status.get("models") or []:
            table.add_row(m["name"], m.get("state", "?"), m.get("provider") or "-",
                          m.get("engine", "-"), m.get("quantisation") or "-",
                          fmt.size_or_label(m.get("size")), _memory(m),
                          fmt.count(m.get("in_use")), key=m["name"])
        notes = engine_notes(status.get("models") or [])
        engines = self.query_one("#dash-engines", Label)
        engines.update("\n".join(notes))
        engines.display = bool(notes)


def engine_notes(models: list[dict]) -> list[str]:
    """One line per model whose engine runs in a fallback configuration or has restarted."""
    out = []
    for m in models:
        if m.get("fallback"):
            out.append(f"⚠ {m['name']}: {m.get('worker_config', 'fallback')} configuration — "
                       f"{m['fallback']}")
        if m.get("worker_restarts"):
            out.append(f"⚠ {m['name']}: engine worker restarted {m['worker_restarts']} time(s), "
                       f"last {m.get('worker_last_exit') or 'exit'}")
    return out

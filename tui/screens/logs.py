"""The audit log (with its hash-chain status) and recent warnings/errors, filterable."""

from __future__ import annotations

import json
from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Input, Label

from tui import format as fmt
from tui.client import AuditLog, LogLine
from tui.screens.base import BoxScreen

LIMIT = 200


class LogsScreen(BoxScreen):
    """Typing in the filter asks the box again with ``q``; escape leaves the filter."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("slash", "focus_filter", "Filter"),
        Binding("escape", "leave_filter", "Leave filter", show=False),
        Binding("r", "reload", "Refresh"),
    ]

    def compose_body(self) -> ComposeResult:
        yield Input(placeholder="filter (/ to focus, escape to leave)", id="filter")
        yield Label("Audit log", classes="section", id="audit-title")
        yield DataTable(id="audit", cursor_type="row", zebra_stripes=True)
        yield Label("Recent warnings and errors", classes="section")
        yield DataTable(id="errors", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one("#audit", DataTable).add_columns("id", "time", "actor", "action",
                                                        "details")
        self.query_one("#errors", DataTable).add_columns("time", "level", "logger", "message")
        self.query_one("#audit", DataTable).focus()
        self.follow(max(3.0, self.admin.refresh_s * 3))  # the tail, while shown

    @property
    def query_text(self) -> str:
        """The filter as typed."""
        return self.query_one("#filter", Input).value.strip()

    def reload(self) -> None:
        q = self.query_text
        self.call_box(lambda: self.client.audit(LIMIT, q), self.show_audit)
        self.call_box(lambda: self.client.logs(LIMIT, q), self.show_logs)

    def action_reload(self) -> None:
        self.reload()

    @on(Input.Changed, "#filter")
    def _filter_changed(self) -> None:
        self.reload()

    def action_focus_filter(self) -> None:
        self.query_one("#filter", Input).focus()

    def action_leave_filter(self) -> None:
        self.query_one("#audit", DataTable).focus()

    def show_audit(self, audit: AuditLog) -> None:
        ok = audit.get("chain_ok")
        title = self.query_one("#audit-title", Label)
        if ok:
            title.update("Audit log — chain intact")
        else:
            where = f" at row {audit['bad_id']}" if audit.get("bad_id") else ""
            why = audit.get("reason") or "rows were altered or removed"
            title.update(f"Audit log — CHAIN BROKEN{where}: {why}")
        title.set_classes("section " + ("good" if ok else "bad"))
        table = self.query_one("#audit", DataTable)
        table.clear()
        rows = sorted(audit.get("rows") or [], key=lambda r: r.get("id") or 0, reverse=True)
        for r in rows:  # newest first
            details = r.get("details")
            if not isinstance(details, str):
                details = json.dumps(details, sort_keys=True)
            table.add_row(str(r.get("id")), fmt.when(r.get("ts")), r.get("actor") or "-",
                          r.get("action", ""), details[:120])

    def show_logs(self, lines: list[LogLine]) -> None:
        table = self.query_one("#errors", DataTable)
        table.clear()
        for line in lines:
            table.add_row(fmt.when(line.get("ts")), line.get("level", ""),
                          line.get("logger", ""), line.get("message", "")[:160])

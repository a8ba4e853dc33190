"""Release slots, update history; apply a signed bundle (inspect, confirm, upload) or roll back."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Label

from tui import format as fmt
from tui.client import ApplyResult, Inspection, Progress, Slot, UpdateRecord, Updates
from tui.screens.base import BoxScreen
from tui.screens.bundle_review import BundleReviewScreen
from tui.screens.confirm import ConfirmScreen
from tui.screens.path_prompt import PathPrompt
from tui.widgets.upload_progress import UploadProgress

T = TypeVar("T")


def slot_text(slot: Slot | dict[str, Any] | None) -> str:
    """One slot as 'a: 1.2.0 (committed)' (firmware state) or '(healthy)' (documented shape)."""
    if not slot:
        return "-"
    if "state" in slot:
        health = str(slot["state"])
        if health == "empty" and not slot.get("version"):
            return f"{slot.get('name', '?')}: empty"
    else:
        health = "healthy" if slot.get("healthy") else "NOT healthy"
    return f"{slot.get('name', '?')}: {slot.get('version') or 'empty'} ({health})"


def split_slots(updates: dict[str, Any]) -> tuple[Any, list[Any], str]:
    """Current slot, the other slot(s) and the version floor, from either answer shape.

    docs/admin-api.md says ``{"current": Slot, "other": Slot, "min_version"}``; the firmware
    status the box sends has ``"slots": [{"name", "state", "version", "current"}]`` and
    ``"floors"``. Both are read.
    """
    if isinstance(updates.get("slots"), list):
        slots = updates["slots"]
        current = next((s for s in slots if s.get("current")), None)
        floors = updates.get("floors") or {}
        floor = ", ".join(f"{k} ≥ {v}" for k, v in sorted(floors.items()))
        return current, [s for s in slots if s is not current], floor or "-"
    other = updates.get("other")
    return updates.get("current"), [other] if other else [], updates.get("min_version") or "-"


class UpdatesScreen(BoxScreen):
    """Apply goes inspect → review (manifest, signature, changes) → apply with progress."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("a", "apply", "Apply bundle"),
        Binding("b", "rollback", "Roll back"),
        Binding("r", "reload", "Refresh"),
    ]

    def compose_body(self) -> ComposeResult:
        yield Label("Release slots", classes="section")
        yield Label("current: …", id="slot-current")
        yield Label("other: …", id="slot-other")
        yield Label("", id="min-version")
        yield UploadProgress(id="upload")
        yield Label("History", classes="section")
        yield DataTable(id="history", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one("#history", DataTable).add_columns(
            "id", "type", "version", "started", "finished", "outcome", "reason")

    def reload(self) -> None:
        self.call_box(self.client.updates, self.show_slots)
        self.call_box(self.client.update_history, self.show_history)

    def action_reload(self) -> None:
        self.reload()

    def show_slots(self, updates: Updates) -> None:
        current, others, floor = split_slots(dict(updates))
        self.query_one("#slot-current", Label).update(
            "current  " + (slot_text(current) if current else "none (not started from a slot)"))
        self.query_one("#slot-other", Label).update(
            "other    " + (" · ".join(slot_text(o) for o in others) or "-"))
        note = f"minimum version accepted: {floor}"
        if updates.get("apply_running"):
            note += " · an update is being applied now"
        elif updates.get("next_boot_reason"):
            note += f" · {updates['next_boot_reason']}"
        self.query_one("#min-version", Label).update(note)

    def show_history(self, rows: list[UpdateRecord]) -> None:
        table = self.query_one("#history", DataTable)
        table.clear()
        for r in sorted(rows, key=lambda r: r.get("id", 0), reverse=True):
            version = r.get("version") or r.get("bundle_version") or "-"
            table.add_row(str(r.get("id")), r.get("type") or "-", version,
                          fmt.when(r.get("started")), fmt.when(r.get("finished")),
                          r.get("outcome") or "(running)", r.get("reason") or "")

    # apply: path → inspect (upload) → review → apply (upload) → result
    def action_apply(self) -> None:
        self.open_modal(PathPrompt("Update bundle to apply (path to the file)",
                                        must_exist=True), self._inspect)

    def _upload(self, path: Path, what: str,
                send: Callable[[Path, Progress], T]) -> Callable[[], T]:
        """Wrap ``send(path, progress)`` so the progress bar follows the upload."""
        upload = self.query_one(UploadProgress)
        upload.start(f"{path.name} ({what})")

        def progress(sent: int, total: int) -> None:
            self.app.call_from_thread(upload.advance, sent, total)

        def call() -> T:
            try:
                return send(path, progress)
            finally:
                self.app.call_from_thread(upload.finish)

        return call

    def _inspect(self, path: Path | None) -> None:
        if path is None:
            return
        call = self._upload(path, "inspect", self.client.inspect_update)
        self.call_box(call, lambda inspection: self._review(path, inspection))

    def _review(self, path: Path, inspection: Inspection) -> None:
        def answered(apply: bool | None) -> None:
            if apply:
                call = self._upload(path, "apply", self.client.apply_update)
                self.call_box(call, self._applied)

        self.open_modal(BundleReviewScreen(path, inspection), answered)

    def _applied(self, result: ApplyResult) -> None:
        outcome = result.get("outcome", "?")
        text = f"Update {outcome}: version {result.get('version') or '?'}"
        if result.get("reason"):
            text += f" ({result['reason']})"
        good = outcome in ("success", "started")  # started: a release finishes detached
        self.notify(text, severity="information" if good else "error", timeout=10)
        self.reload()

    def action_rollback(self) -> None:
        def answered(yes: bool | None) -> None:
            if yes:
                self.call_box(self.client.rollback, self._applied)

        self.open_modal(ConfirmScreen("Roll back to the other release slot?",
                                           yes="Roll back"), answered)

"""Release slots, update history; apply a signed bundle (inspect, confirm, upload) or roll back."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, TypeVar

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


def slot_text(slot: Slot | None) -> str:
    """One slot as 'a: 1.2.0 (healthy)'."""
    if not slot:
        return "-"
    health = "healthy" if slot.get("healthy") else "NOT healthy"
    return f"{slot.get('name', '?')}: {slot.get('version') or 'empty'} ({health})"


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
        self.query_one("#slot-current", Label).update(
            "current  " + slot_text(updates.get("current")))
        self.query_one("#slot-other", Label).update("other    " + slot_text(updates.get("other")))
        self.query_one("#min-version", Label).update(
            f"minimum version accepted: {updates.get('min_version') or '-'}")

    def show_history(self, rows: list[UpdateRecord]) -> None:
        table = self.query_one("#history", DataTable)
        table.clear()
        for r in sorted(rows, key=lambda r: r.get("id", 0), reverse=True):
            table.add_row(str(r.get("id")), r.get("type") or "-", r.get("version") or "-",
                          fmt.when(r.get("started")), fmt.when(r.get("finished")),
                          r.get("outcome") or "(running)", r.get("reason") or "")

    # apply: path → inspect (upload) → review → apply (upload) → result
    def action_apply(self) -> None:
        self.app.push_screen(PathPrompt("Update bundle to apply (path to the file)",
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

        self.app.push_screen(BundleReviewScreen(path, inspection), answered)

    def _applied(self, result: ApplyResult) -> None:
        outcome = result.get("outcome", "?")
        text = f"Update {outcome}: version {result.get('version') or '?'}"
        if result.get("reason"):
            text += f" ({result['reason']})"
        self.notify(text, severity="information" if outcome == "success" else "error",
                    timeout=10)
        self.reload()

    def action_rollback(self) -> None:
        def answered(yes: bool | None) -> None:
            if yes:
                self.call_box(self.client.rollback, self._applied)

        self.app.push_screen(ConfirmScreen("Roll back to the other release slot?",
                                           yes="Roll back"), answered)

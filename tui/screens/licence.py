"""Licence state, fingerprint match, entitlements; offline activation files."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.widgets import Label, Static

from storage.files import atomic_write
from tui import format as fmt
from tui.client import Licence, dump_json
from tui.screens.base import BoxScreen
from tui.screens.confirm import ConfirmScreen
from tui.screens.path_prompt import PathPrompt


def describe(lic: Licence) -> str:
    """The licence as aligned lines of text."""
    ent = lic.get("entitlements") or {}
    rows = [
        ("State", fmt.licence_line(dict(lic))),
        ("Licence id", lic.get("licence_id") or "-"),
        ("Customer", lic.get("customer") or "-"),
        ("Seats", f"{lic.get('seats_used', 0)} used of {lic.get('seats', 0)}"),
        ("Valid from", fmt.when(lic.get("valid_from"))),
        ("Expires", fmt.when(lic.get("expires_at"))),
        ("Days left", _num(lic.get("days_left"))),
        ("Grace days left", _num(lic.get("grace_days_left"))),
        ("Fingerprint", lic.get("fingerprint_match") or "-"),
        ("Models", ", ".join(ent.get("models") or []) or "-"),
        ("Features", ", ".join(ent.get("features") or []) or "-"),
    ]
    if lic.get("clock_locked"):
        rows.append(("Clock", f"LOCKED: {lic['clock_locked']} (c to accept the clock)"))
    text = "\n".join(f"{k:<16} {v}" for k, v in rows)
    if lic.get("message"):
        text += f"\n\n{lic['message']}"
    return text


def _num(value: Any) -> str:
    return "-" if value is None else str(value)


class LicenceScreen(BoxScreen):
    """Shows GET /admin/licence; writes the activation request, imports the response."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("w", "write_request", "Write request"),
        Binding("i", "import_response", "Import activation"),
        Binding("c", "ack_clock", "Accept clock"),
        Binding("r", "reload", "Refresh"),
    ]

    def compose_body(self) -> ComposeResult:
        yield Static("EVALUATION LICENCE — not for production use; activate with w / i",
                     id="evaluation-banner")
        yield Label("Licence", classes="section")
        with VerticalScroll():
            yield Static("…", id="licence-details")

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one("#evaluation-banner").display = False

    def reload(self) -> None:
        self.call_box(self.client.licence, self.show)

    def action_reload(self) -> None:
        self.reload()

    def show(self, lic: Licence) -> None:
        """Render a licence answer."""
        evaluation = bool(lic.get("evaluation")) or lic.get("state") == "evaluation"
        self.query_one("#evaluation-banner").display = evaluation
        details = self.query_one("#licence-details", Static)
        details.update(describe(lic))
        details.set_classes(f"licence-{lic.get('state', 'missing')}")

    def action_write_request(self) -> None:
        self.open_modal(PathPrompt("Write the activation request to",
                                        value="activation-request.json"), self._write_request)

    def _write_request(self, path: Path | None) -> None:
        if path is None:
            return

        def call() -> Path:
            atomic_write(path, dump_json(self.client.licence_request()), 0o600)
            return path

        self.call_box(call, lambda p: self.notify(
            f"Wrote {p}. Send it to the vendor; import the answer with i.", timeout=8))

    def action_import_response(self) -> None:
        self.open_modal(PathPrompt("Import the vendor's activation file",
                                        must_exist=True), self._import)

    def _import(self, path: Path | None) -> None:
        if path is None:
            return
        self.call_box(lambda: self.client.licence_import(path.read_bytes()), self._imported)

    def _imported(self, lic: Licence) -> None:
        self.notify(f"Licence imported: {fmt.licence_line(dict(lic))}")
        self.show(lic)

    def action_ack_clock(self) -> None:
        def answered(yes: bool | None) -> None:
            if yes:
                self.call_box(self.client.ack_clock, self._acked)

        self.open_modal(ConfirmScreen("Accept the box's current clock as correct? Do this only "
                                      "after checking the date and time.", yes="Accept"),
                        answered)

    def _acked(self, lic: Licence) -> None:
        self.notify("Clock accepted.")
        self.show(lic)

"""Show a freshly created API key exactly once."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label


class KeyShownScreen(ModalScreen[None]):
    """The secret in a selectable field, a copy hint, and nothing kept after closing."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("c", "copy", "Copy"),
        Binding("escape,enter", "close", "Close"),
    ]

    def __init__(self, secret: str, seat_name: str) -> None:
        super().__init__()
        self.secret = secret
        self.seat_name = seat_name

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="key-dialog"):
            yield Label(f"New API key for {self.seat_name}", classes="dialog-title")
            yield Input(self.secret, id="secret")
            yield Label("Copy it now: it is shown only this once and the box keeps only its "
                        "hash. Press c to copy to the clipboard (OSC 52, works over SSH in "
                        "most terminals) or select it with the mouse.", classes="dialog-hint")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Copy", variant="primary", id="copy")
                yield Button("Close", id="close")

    def on_mount(self) -> None:
        self.query_one("#close", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "copy":
            self.action_copy()
        else:
            self.action_close()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.value != self.secret:  # the field is for selecting, not editing
            event.input.value = self.secret

    def action_copy(self) -> None:
        self.app.copy_to_clipboard(self.secret)
        self.notify("Key copied to the clipboard.")

    def action_close(self) -> None:
        self.dismiss(None)

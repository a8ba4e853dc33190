"""The form for a new seat (name, contact, role) as a modal screen."""

from __future__ import annotations

from typing import ClassVar, TypedDict

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select


class SeatForm(TypedDict):
    name: str
    contact: str
    role: str


class NewSeatScreen(ModalScreen[SeatForm | None]):
    """Dismisses with the form's values, or None when cancelled."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("New seat", classes="dialog-title")
            yield Input(placeholder="name (required)", id="name")
            yield Input(placeholder="contact (e-mail, team…)", id="contact")
            yield Select([("user", "user"), ("admin", "admin")], value="user",
                         allow_blank=False, id="role")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Create", variant="primary", id="create")
                yield Button("Cancel", id="cancel")

    def _submit(self) -> None:
        name = self.query_one("#name", Input).value.strip()
        if not name:
            self.notify("A seat needs a name.", severity="warning")
            self.query_one("#name", Input).focus()
            return
        role = self.query_one("#role", Select).value
        self.dismiss(SeatForm(name=name, contact=self.query_one("#contact", Input).value.strip(),
                              role=str(role)))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "name":
            self.query_one("#contact", Input).focus()
        else:
            self._submit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "create":
            self._submit()
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)

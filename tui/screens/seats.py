"""Seats with their usage, their API keys, and the usage export."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Label

from storage.files import atomic_write
from tui import format as fmt
from tui.client import ApiKey, NewApiKey, Seat
from tui.screens.base import BoxScreen
from tui.screens.confirm import ConfirmScreen
from tui.screens.key_shown import KeyShownScreen
from tui.screens.new_seat import NewSeatScreen, SeatForm
from tui.screens.path_prompt import PathPrompt


class SeatsScreen(BoxScreen):
    """The upper table lists seats; the lower one the highlighted seat's keys."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("n", "new_seat", "New seat"),
        Binding("x", "remove_seat", "Del seat"),
        Binding("k", "new_key", "New key"),
        Binding("r", "revoke_key", "Revoke"),
        Binding("t", "rotate_key", "Rotate"),
        Binding("e", "export", "CSV"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self._seats: dict[str, Seat] = {}
        self._highlight: str | None = None  # a seat just created, to highlight once listed

    def compose_body(self) -> ComposeResult:
        yield Label("Seats", classes="section")
        yield DataTable(id="seats", cursor_type="row", zebra_stripes=True)
        yield Label("Keys of the highlighted seat", classes="section", id="keys-title")
        yield DataTable(id="keys", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one("#seats", DataTable).add_columns(
            "id", "name", "role", "contact", "created", "req today", "req month",
            "tokens today", "tokens month")
        self.query_one("#keys", DataTable).add_columns(
            "id", "prefix", "created", "state")

    def reload(self) -> None:
        self.call_box(self.client.seats, self.show)

    def show(self, seats: list[Seat]) -> None:
        """Fill the seat table, keeping the highlighted row, and load its keys."""
        table = self.query_one("#seats", DataTable)
        row = table.cursor_row
        table.clear()
        self._seats = {str(s["id"]): s for s in seats}
        for s in seats:
            table.add_row(str(s["id"]), s["name"], s["role"], s.get("contact") or "-",
                          fmt.when(s.get("created")), str(s.get("requests_today", 0)),
                          str(s.get("requests_month", 0)), str(s.get("tokens_today", 0)),
                          str(s.get("tokens_month", 0)), key=str(s["id"]))
        if self._highlight in self._seats:
            row = table.get_row_index(self._highlight)
            self._highlight = None
        if seats:
            table.move_cursor(row=min(row, len(seats) - 1))
        self.load_keys()

    def selected_seat(self) -> Seat | None:
        table = self.query_one("#seats", DataTable)
        if not table.row_count:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return self._seats.get(str(key))

    def selected_key(self) -> str | None:
        table = self.query_one("#keys", DataTable)
        if not table.row_count:
            self.notify("The highlighted seat has no key.", severity="warning")
            return None
        return str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "seats":
            self.load_keys()

    def load_keys(self) -> None:
        seat = self.selected_seat()
        if seat is None:
            self.show_keys([])
            return
        seat_id = seat["id"]
        self.query_one("#keys-title", Label).update(f"Keys of {seat['name']}")
        self.call_box(lambda: self.client.keys(seat_id), lambda keys: self.show_keys(keys, seat_id))

    def show_keys(self, keys: list[ApiKey], seat_id: int | str | None = None) -> None:
        """Fill the key table, unless the highlight moved to another seat meanwhile."""
        seat = self.selected_seat()
        if seat_id is not None and (seat is None or seat["id"] != seat_id):
            return
        table = self.query_one("#keys", DataTable)
        row = table.cursor_row
        table.clear()
        for k in keys:
            table.add_row(str(k["id"]), k["prefix"] + "…", fmt.when(k.get("created")),
                          "revoked" if k.get("revoked") else "active", key=str(k["id"]))
        if keys:
            table.move_cursor(row=min(row, len(keys) - 1))

    # seats
    def action_new_seat(self) -> None:
        self.open_modal(NewSeatScreen(), self._create_seat)

    def _create_seat(self, form: SeatForm | None) -> None:
        if form is None:
            return
        self.call_box(lambda: self.client.create_seat(form["name"], form["contact"],
                                                      form["role"]), self._seat_created)

    def _seat_created(self, seat: Seat) -> None:
        self.notify(f"Seat {seat['name']} created ({seat['role']}). Press k for its key.")
        self._highlight = str(seat["id"])
        self.reload()

    def action_remove_seat(self) -> None:
        seat = self.selected_seat()
        if seat is None:
            return
        seat_id, name = seat["id"], seat["name"]

        def answered(yes: bool | None) -> None:
            if yes:
                self.call_box(lambda: self.client.remove_seat(seat_id), self._seat_removed)

        self.open_modal(ConfirmScreen(f"Remove seat {name} and revoke all its keys?",
                                           yes="Remove"), answered)

    def _seat_removed(self, seat_id: str) -> None:
        self.notify(f"Seat {seat_id} removed.")
        self.reload()

    # keys
    def action_new_key(self) -> None:
        seat = self.selected_seat()
        if seat is None:
            self.notify("Create or highlight a seat first.", severity="warning")
            return
        seat_id = seat["id"]
        self.call_box(lambda: self.client.create_key(seat_id), self._key_made)

    def _key_made(self, key: NewApiKey) -> None:
        seat = self._seats.get(str(key["seat_id"]))
        name = seat["name"] if seat else key["seat_id"]
        self.open_modal(KeyShownScreen(key["key"], str(name)))
        self.load_keys()

    def action_revoke_key(self) -> None:
        key_id = self.selected_key()
        if key_id is None:
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.call_box(lambda: self.client.revoke_key(key_id), self._revoked)

        self.open_modal(ConfirmScreen(f"Revoke key {key_id}? Clients using it stop "
                                           "working at once.", yes="Revoke"), answered)

    def _revoked(self, key: ApiKey) -> None:
        self.notify(f"Key {key['prefix']}… revoked.")
        self.load_keys()

    def action_rotate_key(self) -> None:
        key_id = self.selected_key()
        if key_id is None:
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.call_box(lambda: self.client.rotate_key(key_id), self._key_made)

        self.open_modal(ConfirmScreen(f"Rotate key {key_id}? The old key is revoked.",
                                           yes="Rotate"), answered)

    # export
    def action_export(self) -> None:
        self.open_modal(PathPrompt("Export usage as CSV to", value="usage.csv"),
                             self._export)

    def _export(self, path: Path | None) -> None:
        if path is None:
            return

        def call() -> int:
            text = self.client.usage_csv()
            atomic_write(path, text, 0o600)
            return max(0, len(text.strip().splitlines()) - 1)

        self.call_box(call, lambda rows: self.notify(f"Wrote {rows} usage rows to {path}."))

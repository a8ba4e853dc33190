"""Models in the box's store: load, unload, verify, remove, import a model-pack bundle."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Label

from tui import format as fmt
from tui.client import ApplyResult, Model, VerifyResult
from tui.screens.base import BoxScreen
from tui.screens.confirm import ConfirmScreen
from tui.screens.path_prompt import PathPrompt
from tui.widgets.upload_progress import UploadProgress


class ModelsScreen(BoxScreen):
    """A table of models; actions apply to the highlighted row."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("o", "load", "Load"),
        Binding("f", "unload", "Unload"),
        Binding("v", "verify", "Verify"),
        Binding("x", "remove", "Remove"),
        Binding("i", "import_pack", "Import pack"),
        Binding("r", "reload", "Refresh"),
    ]

    def compose_body(self) -> ComposeResult:
        yield Label("Models", classes="section")
        yield DataTable(id="models", cursor_type="row", zebra_stripes=True)
        yield UploadProgress(id="upload")

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one(DataTable).add_columns(
            "name", "state", "provider", "engine/format", "quant", "on disk", "memory",
            "last used", "busy")

    def reload(self) -> None:
        self.call_box(self.client.models, self.show)

    def action_reload(self) -> None:
        self.reload()

    def show(self, models: list[Model]) -> None:
        """Fill the table, keeping the highlighted row where it was."""
        table = self.query_one(DataTable)
        row = table.cursor_row
        table.clear()
        for m in models:
            table.add_row(m["name"], m.get("state", "?"), m.get("provider") or "-",
                          f"{m.get('engine', '-')}/{m.get('format', '-')}",
                          m.get("quantisation") or "-", fmt.size_or_label(m.get("size")),
                          fmt.size(m.get("bytes")) if m.get("bytes") else "-",
                          fmt.when(m.get("last_used")), fmt.count(m.get("in_use")),
                          key=m["name"])
        if models:
            table.move_cursor(row=min(row, len(models) - 1))

    def selected(self) -> str | None:
        """Name of the highlighted model."""
        table = self.query_one(DataTable)
        if not table.row_count:
            self.notify("No model selected.", severity="warning")
            return None
        return str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)

    def action_load(self) -> None:
        if name := self.selected():
            self.notify(f"Loading {name}…")
            self.call_box(lambda: self.client.load_model(name), self._changed)

    def action_unload(self) -> None:
        if name := self.selected():
            self.call_box(lambda: self.client.unload_model(name), self._changed)

    def _changed(self, model: Model) -> None:
        self.notify(f"{model['name']} is {model.get('state')}.")
        self.reload()

    def action_verify(self) -> None:
        if name := self.selected():
            self.call_box(lambda: self.client.verify_model(name), self._verified)

    def _verified(self, result: VerifyResult) -> None:
        if result.get("ok"):
            self.notify(f"{result['name']}: every file intact.")
        else:
            self.notify("\n".join(result.get("problems") or ["unknown problem"]),
                        title=f"{result['name']} is damaged", severity="error", timeout=10)

    def action_remove(self) -> None:
        name = self.selected()
        if not name:
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.call_box(lambda: self.client.remove_model(name), self._removed)

        self.open_modal(ConfirmScreen(f"Remove model {name} and its files from the box?",
                                           yes="Remove"), answered)

    def _removed(self, name: str) -> None:
        self.notify(f"Removed {name}.")
        self.reload()

    def action_import_pack(self) -> None:
        self.open_modal(PathPrompt("Import a model-pack bundle (path to the file)",
                                        must_exist=True), self._import)

    def _import(self, path: Path | None) -> None:
        if path is None:
            return
        upload = self.query_one(UploadProgress)
        upload.start(path.name)

        def progress(sent: int, total: int) -> None:
            self.app.call_from_thread(upload.advance, sent, total)

        def call() -> ApplyResult:
            try:
                return self.client.apply_update(path, progress)
            finally:
                self.app.call_from_thread(upload.finish)

        self.call_box(call, self._imported)

    def _imported(self, result: ApplyResult) -> None:
        outcome = result.get("outcome", "?")
        text = f"Import {outcome}" + (f": {result['reason']}" if result.get("reason") else "")
        ok = outcome == "success"
        self.notify(text, severity="information" if ok else "error", timeout=8)
        self.reload()

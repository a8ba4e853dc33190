"""A label and progress bar for a file streamed to the box; hidden when idle."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.reactive import reactive
from textual.widget import Widget
from textual.widgets import Label, ProgressBar

from tui.format import size


class UploadProgress(Widget):
    """Shows ``start``, ``advance`` and ``finish`` of an upload."""

    active: reactive[bool] = reactive(False)
    """True while an upload runs (the widget is visible)."""

    def compose(self) -> ComposeResult:
        yield Label("", id="upload-label")
        yield ProgressBar(total=None, show_eta=False)

    def watch_active(self, value: bool) -> None:
        self.display = value

    def start(self, what: str) -> None:
        """Show the bar for a new upload of ``what``."""
        self.active = True
        self._what = what
        self.query_one("#upload-label", Label).update(f"Uploading {what}…")
        self.query_one(ProgressBar).update(total=None, progress=0)

    def advance(self, sent: int, total: int) -> None:
        """Record ``sent`` of ``total`` bytes."""
        self.query_one(ProgressBar).update(total=max(total, 1), progress=sent)
        label = f"Uploading {self._what}: {size(sent)} of {size(total)}"
        if total and sent >= total:
            label = f"Uploaded {self._what}; the box is working on it…"
        self.query_one("#upload-label", Label).update(label)

    def finish(self) -> None:
        """Hide the bar."""
        self.active = False

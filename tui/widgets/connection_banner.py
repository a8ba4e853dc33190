"""A banner shown while the box cannot be reached."""

from __future__ import annotations

from textual.reactive import reactive
from textual.widgets import Static


class ConnectionBanner(Static):
    """Follows the app's ``connected`` and ``last_error``; hidden while connected."""

    connected: reactive[bool] = reactive(True)
    """Mirror of the app's connection state."""

    reason: reactive[str] = reactive("")
    """Why the last call failed."""

    def on_mount(self) -> None:
        self.watch(self.app, "connected", self._follow_connected, init=True)
        self.watch(self.app, "last_error", self._follow_reason, init=True)

    def _follow_connected(self, value: bool) -> None:
        self.connected = value

    def _follow_reason(self, value: str) -> None:
        self.reason = value

    def watch_connected(self, value: bool) -> None:
        self.display = not value
        self._render_text()

    def watch_reason(self) -> None:
        self._render_text()

    def _render_text(self) -> None:
        self.update(f"CONNECTION LOST — {self.reason or 'the box does not answer'} — retrying…")

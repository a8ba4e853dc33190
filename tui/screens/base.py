"""The frame every main screen shares: header, connection banner, body, footer."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Footer, Header

from tui.widgets.connection_banner import ConnectionBanner

if TYPE_CHECKING:
    from tui.app import AdminApp
    from tui.client import AdminClient

T = TypeVar("T")


class BoxScreen(Screen[None]):
    """A main screen: widgets come from ``compose_body``, data is fetched in ``reload``."""

    _back_from_modal = False

    @property
    def admin(self) -> AdminApp:
        """The running admin app (typed)."""
        return cast("AdminApp", self.app)

    @property
    def client(self) -> AdminClient:
        """The box client the app was given."""
        return self.admin.client

    def compose(self) -> ComposeResult:
        yield Header()
        yield ConnectionBanner(id="banner")
        yield from self.compose_body()
        yield Footer(compact=True, show_command_palette=False)

    def compose_body(self) -> ComposeResult:
        """The screen's own widgets."""
        yield from ()

    def on_mount(self) -> None:
        self.watch(self.app, "connected", self._connection_changed, init=False)

    def follow(self, every_s: float) -> None:
        """Reload every ``every_s`` seconds while this screen is shown and the box answers."""
        self.set_interval(every_s, self._follow_tick)

    def _follow_tick(self) -> None:
        if self.is_current and self.admin.connected:
            self.reload()

    def on_screen_resume(self) -> None:
        if self._back_from_modal:  # the modal's own action refreshes what it changed
            self._back_from_modal = False
            return
        self.reload()

    def open_modal(self, screen: Screen[T], callback: Callable[[T | None], Any] | None = None
                   ) -> None:
        """Push a dialog; coming back from it does not reload (a stale answer could land last)."""
        self._back_from_modal = True
        self.app.push_screen(screen, callback)

    def _connection_changed(self, connected: bool) -> None:
        if connected and self.is_current:
            self.reload()

    def reload(self) -> None:
        """Fetch this screen's data again (called when shown and on reconnection)."""

    def call_box(self, fn: Callable[[], T], done: Callable[[T], Any] | None = None) -> None:
        """Run ``fn`` (a client call) in a worker; errors become notifications."""
        self.admin.call_box(fn, done)

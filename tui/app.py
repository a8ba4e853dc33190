"""`appliance-admin`: the box's admin TUI, talking to the admin API over HTTP only."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from textual import work
from textual.app import App
from textual.binding import Binding, BindingType
from textual.reactive import reactive

from tui.client import (
    DEFAULT_URL,
    AdminClient,
    BoxError,
    BoxUnreachable,
    KeyFileError,
    Status,
    resolve_key,
)
from tui.screens.dashboard import DashboardScreen
from tui.screens.fleet import FleetScreen
from tui.screens.licence import LicenceScreen
from tui.screens.logs import LogsScreen
from tui.screens.models import ModelsScreen
from tui.screens.seats import SeatsScreen
from tui.screens.updates import UpdatesScreen

log = logging.getLogger(__name__)
T = TypeVar("T")


class AdminApp(App[None]):
    """Seven screens (dashboard, models, seats, licence, updates, logs, fleet) over one
    client.

    ``client`` is an :class:`~tui.client.AdminClient` or anything with the same methods
    (the tests pass an in-memory fake). The app polls ``client.status()`` every
    ``refresh_s`` seconds; that poll feeds the dashboard and detects a lost connection.
    """

    CSS_PATH = "admin.tcss"
    TITLE = "Appliance admin"
    MODES: ClassVar[dict[str, Any]] = {
        "dashboard": DashboardScreen,
        "models": ModelsScreen,
        "seats": SeatsScreen,
        "licence": LicenceScreen,
        "updates": UpdatesScreen,
        "logs": LogsScreen,
        "fleet": FleetScreen,
    }
    DEFAULT_MODE = "dashboard"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("d", "switch_mode('dashboard')", "Dashboard"),
        Binding("m", "switch_mode('models')", "Models"),
        Binding("s", "switch_mode('seats')", "Seats"),
        Binding("l", "switch_mode('licence')", "Licence"),
        Binding("u", "switch_mode('updates')", "Updates"),
        Binding("g", "switch_mode('logs')", "Logs"),
        Binding("F", "switch_mode('fleet')", "Fleet"),
        Binding("q", "quit", "Quit"),
    ]

    connected: reactive[bool] = reactive(True)
    """False while the box cannot be reached; the banner shows and polling goes on."""

    last_error: reactive[str] = reactive("")
    """Why the box was last unreachable."""

    status: reactive[Status | None] = reactive(None, always_update=True)
    """The latest answer of GET /admin/status."""

    def __init__(self, client: Any, *, refresh_s: float = 1.5, url: str = "") -> None:
        super().__init__()
        self.client = client
        self.refresh_s = refresh_s
        self.sub_title = url or getattr(client, "base_url", "")
        self._poll_error = ""

    def on_mount(self) -> None:
        self.poll()
        self.set_interval(self.refresh_s, self.poll)

    @work(thread=True, exclusive=True, group="poll", exit_on_error=False)
    def poll(self) -> None:
        """Fetch the box's status once; also the retry loop while disconnected."""
        try:
            status = self.client.status()
        except BoxUnreachable as exc:
            self.call_from_thread(self.lost_connection, str(exc))
        except BoxError as exc:
            self.call_from_thread(self._status_refused, exc)
        except Exception as exc:  # a malformed answer must not end the poll
            log.exception("status poll failed")
            self.call_from_thread(self._status_refused, BoxError(0, f"unexpected answer: {exc}"))
        else:
            self.call_from_thread(self._got_status, status)

    def _got_status(self, status: Status) -> None:
        self._poll_error = ""
        self.reconnected()
        self.status = status

    def _status_refused(self, exc: BoxError) -> None:
        self.reconnected()
        if exc.message != self._poll_error:  # say it once, not every refresh
            self._poll_error = exc.message
            self.notify(exc.message, title=f"Status refused ({exc.status})", severity="error")

    def lost_connection(self, reason: str) -> None:
        """Show the banner; the poll keeps retrying."""
        self.last_error = reason
        if self.connected:
            log.warning("connection lost: %s", reason)
        self.connected = False

    def reconnected(self) -> None:
        """Hide the banner after a successful answer."""
        if not self.connected:
            log.info("connection restored")
            self.connected = True
            self.notify("Connection to the box restored.")

    @work(thread=True, group="box")
    def call_box(self, fn: Callable[[], T], done: Callable[[T], Any] | None = None) -> None:
        """Run one client call off the event loop; its errors become notifications.

        ``done`` runs on the event loop with the result.
        """
        try:
            result = fn()
        except BoxError as exc:
            self.call_from_thread(self.notify, exc.message, title=f"Box refused ({exc.status})",
                                  severity="error", timeout=8)
            return
        except BoxUnreachable as exc:
            self.call_from_thread(self.lost_connection, str(exc))
            self.call_from_thread(self.notify, str(exc), title="Box unreachable",
                                  severity="error")
            return
        except OSError as exc:  # a local file the action reads or writes
            self.call_from_thread(self.notify, str(exc), title="Local file", severity="error")
            return
        except Exception as exc:  # e.g. an answer not shaped as documented
            log.exception("admin call failed")
            self.call_from_thread(self.notify, f"{type(exc).__name__}: {exc}",
                                  title="Unexpected answer", severity="error")
            return
        self.call_from_thread(self.reconnected)
        if done is not None:
            self.call_from_thread(self._deliver, done, result)

    def _deliver(self, done: Callable[[T], Any], result: T) -> None:
        """Hand a result to the screen; an answer it cannot show is a notification."""
        try:
            done(result)
        except Exception as exc:  # e.g. a field the box did not send
            log.exception("could not show the box's answer")
            self.notify(f"{type(exc).__name__}: {exc}", title="Unexpected answer",
                        severity="error")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="appliance-admin",
        description="Admin console of an inference appliance (talks HTTP to its admin API; "
                    "works over SSH against a remote box).")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"the box (default {DEFAULT_URL})")
    parser.add_argument("--key", help="admin API key (visible in ps; prefer $APPLIANCE_ADMIN_KEY "
                        "or --key-file)")
    parser.add_argument("--key-file", default="data/admin.key",
                        help="file holding the admin key, mode 0600 (default data/admin.key)")
    parser.add_argument("--refresh", type=float, default=1.5,
                        help="dashboard refresh in seconds (default 1.5)")
    parser.add_argument("--timeout", type=float, default=10.0, help="HTTP timeout in seconds")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `appliance-admin`."""
    args = build_parser().parse_args(argv)
    from textual.logging import TextualHandler

    # log records go to Textual's devtools console, never onto the screen being drawn
    logging.basicConfig(level=logging.INFO, handlers=[TextualHandler()])
    try:
        key = resolve_key(args.key, args.key_file)
    except KeyFileError as exc:
        print(f"appliance-admin: {exc}", file=sys.stderr)
        return 2
    client = AdminClient(args.url, key, timeout=args.timeout)
    try:
        AdminApp(client, refresh_s=max(0.5, args.refresh), url=args.url).run()
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

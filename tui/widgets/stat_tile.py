"""A dashboard tile: a label, the current value and optionally a sparkline of its trend."""

from __future__ import annotations

from collections import deque

from textual.app import ComposeResult
from textual.reactive import reactive
from textual.widget import Widget
from textual.widgets import Label, Sparkline

HISTORY = 60


class StatTile(Widget):
    """One figure of the dashboard; ``push`` a new sample on each refresh."""

    value: reactive[str] = reactive("-")
    """The figure as shown."""

    def __init__(self, label: str, *, trend: bool = False, id: str | None = None) -> None:
        super().__init__(id=id)
        self.label = label
        self.trend = trend
        self._samples: deque[float] = deque(maxlen=HISTORY)

    def compose(self) -> ComposeResult:
        yield Label(self.label, classes="tile-label")
        yield Label(self.value, classes="tile-value")
        if self.trend:
            yield Sparkline([], summary_function=max)

    def push(self, text: str, sample: float | None = None) -> None:
        """Show ``text`` and add ``sample`` to the trend line."""
        self.value = text
        if self.trend and sample is not None:
            self._samples.append(float(sample))
            self.query_one(Sparkline).data = list(self._samples)

    def watch_value(self, value: str) -> None:
        if self.is_mounted:
            self.query_one(".tile-value", Label).update(value)

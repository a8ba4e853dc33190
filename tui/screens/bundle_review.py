"""Review an inspected update bundle (manifest, signature, changes) before applying it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static

from tui.client import Inspection


class BundleReviewScreen(ModalScreen[bool]):
    """Dismisses with True when the admin applies a signed bundle the box would accept."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, path: Path, inspection: Inspection) -> None:
        super().__init__()
        self.path = path
        self.inspection = inspection

    @property
    def signed(self) -> bool:
        """Whether the box found the signature valid."""
        return self.inspection.get("signature") == "valid"

    @property
    def problem(self) -> str | None:
        """Why the box would refuse this bundle (version floor, payloads...), if it would."""
        found = dict(self.inspection)
        if found.get("problem"):
            return str(found["problem"])
        if found.get("payloads_ok") is False:
            return "payload checksums do not match the manifest"
        return None

    @property
    def applicable(self) -> bool:
        """Signed and with nothing the box would refuse."""
        return self.signed and self.problem is None

    def compose(self) -> ComposeResult:
        manifest = self.inspection.get("manifest") or {}
        changes = self.inspection.get("changes") or []
        with Vertical(classes="dialog", id="review-dialog"):
            yield Label(f"Bundle {self.path.name}", classes="dialog-title")
            sig = self.inspection.get("signature", "unknown")
            if self.inspection.get("key_id"):
                sig += f" (vendor key {self.inspection['key_id']})"
            yield Label(f"Signature: {sig}", id="signature",
                        classes="good" if self.signed else "bad")
            if self.problem:
                yield Label(f"The box would refuse it: {self.problem}", id="problem",
                            classes="bad")
            with VerticalScroll(id="review-body"):
                yield Static("What will change:\n" + "\n".join(f"  • {c}" for c in changes)
                             if changes else "What will change: nothing reported", id="changes")
                yield Static("Manifest:\n" + json.dumps(manifest, indent=2, sort_keys=True),
                             id="manifest")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Apply", variant="error", id="apply", disabled=not self.applicable)
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#cancel", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "apply" and self.applicable)

    def action_cancel(self) -> None:
        self.dismiss(False)

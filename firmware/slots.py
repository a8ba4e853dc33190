"""A/B slots for releases: install into the inactive slot, switch, commit, fall back.

The low-level layout (``current`` symlink, slot.json, boot.json, the boot counter) lives in
``firmware.boot`` so that it runs with the standard library alone; this module adds the
parts that need a verified bundle: building a slot's virtualenv offline from the bundled
wheels. A venv records absolute paths in its scripts, so it is built at its final place;
the slot becomes startable only when its slot.json is written (atomically) last.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from firmware import boot
from firmware.errors import ApplyError, SlotError
from firmware.reader import VerifiedBundle

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class SlotStatus:
    """One slot as status reports it."""

    name: str
    state: str  # empty | installing | ready | committed | bad
    version: str | None
    current: bool
    info: dict[str, Any]


class Slots:
    """The A/B slot root (``/opt/appliance`` or ``<data_dir>/slots``)."""

    def __init__(self, root: Path, python: str | None = None,
                 pip_timeout: float = 600.0) -> None:
        self.root = Path(root)
        self.python = python or getattr(sys, "_base_executable", None) or sys.executable
        self.pip_timeout = pip_timeout

    # --- queries ----------------------------------------------------------------------
    def current(self) -> str | None:
        return boot.current_slot(self.root)

    def inactive(self) -> str:
        return boot.other(self.current())

    def info(self, slot: str) -> dict[str, Any]:
        return boot.slot_info(self.root, slot) or {}

    def version(self, slot: str | None) -> str | None:
        return self.info(slot).get("version") if slot else None

    def status(self) -> list[SlotStatus]:
        cur = self.current()
        out = []
        for s in boot.SLOTS:
            info = self.info(s)
            state = info.get("state") or ("installing" if (self.root / s).exists() else "empty")
            out.append(SlotStatus(s, state, info.get("version"), s == cur, info))
        return out

    def boot_state(self) -> dict[str, Any]:
        return boot.read_json(self.root / "boot.json") or {}

    # --- changes ----------------------------------------------------------------------
    def ensure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def clear(self, slot: str) -> None:
        """Make ``slot`` unstartable (slot.json first), then remove its contents."""
        if slot == self.current():
            raise SlotError(f"slot {slot} is current; refusing to clear it")
        path = self.root / slot
        (path / "slot.json").unlink(missing_ok=True)
        if path.exists():
            boot.fsync_dir(path)
            trash = self.root / f".trash-{slot}-{time.time_ns()}"
            os.replace(path, trash)
            shutil.rmtree(trash, ignore_errors=True)

    def install_release(self, bundle: VerifiedBundle, slot: str,
                        progress: Progress | None = None,
                        step: Callable[[str], None] | None = None) -> Path:
        """Extract wheels into ``slot`` and build its venv offline; mark it ready last."""
        self.clear(slot)
        path = self.root / slot
        path.mkdir()
        bundle.extract(path, progress, only=lambda p: p.path.startswith("wheels/"))
        if step:
            step("venv")
        self._build_venv(path)
        m = bundle.manifest
        write_slot = {
            "slot": slot, "state": "ready", "version": m.version,
            "bundle": bundle.path.name, "key_id": bundle.header.kid,
            "manifest": bundle.header.manifest_bytes.decode(), "signature": bundle.header.sig,
            "installed_at": int(time.time()),
        }
        boot.write_json_atomic(path / "slot.json", write_slot)
        log.info("slot %s ready with release %s", slot, m.version)
        return path

    def _build_venv(self, path: Path) -> None:
        venv, wheels = path / "venv", sorted((path / "wheels").glob("*.whl"))
        if not wheels:
            raise ApplyError("the release carries no wheels")
        own_pip = importlib.util.find_spec("pip") is not None
        cmd = [self.python, "-m", "venv"] + (["--without-pip"] if own_pip else []) + [str(venv)]
        self._run(cmd, "creating the virtualenv")
        pip = ([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python")]
               if own_pip else [str(venv / "bin" / "python"), "-m", "pip"])
        self._run([*pip, "install", "--no-index", "--find-links", str(path / "wheels"),
                   "--no-cache-dir", "--disable-pip-version-check", "--no-input", "-q",
                   *map(str, wheels)], "installing the bundled wheels (offline)")

    def _run(self, cmd: list[str], what: str) -> None:
        log.info("%s: %s", what, " ".join(cmd))
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
        env["PIP_NO_INDEX"] = "1"
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                                  timeout=self.pip_timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ApplyError(f"{what} failed: {exc}") from exc
        if proc.returncode != 0:
            raise ApplyError(f"{what} failed: {(proc.stderr or proc.stdout).strip()[-600:]}")

    def arm(self, trial: str, previous: str | None) -> None:
        """Record that ``trial`` is about to be tried; the boot counter starts at 0."""
        boot.write_json_atomic(self.root / "boot.json",
                               {"trial": trial, "previous": previous, "attempts": 0,
                                "armed_at": int(time.time())})

    def switch(self, slot: str) -> None:
        boot.switch(self.root, slot)

    def commit(self, slot: str) -> None:
        """The trial passed: mark it committed, clear boot.json, refresh boot.py."""
        info = self.info(slot)
        boot.write_json_atomic(self.root / slot / "slot.json",
                               {**info, "state": "committed", "committed_at": int(time.time())})
        boot.write_json_atomic(self.root / "boot.json", {})
        self.install_launcher()

    def revert(self, to: str | None, failed: str, reason: str) -> None:
        """Switch back to ``to`` (or unlink ``current`` if none), mark ``failed`` bad."""
        if to and boot.slot_ok(self.root, to):
            self.switch(to)
        else:
            (self.root / "current").unlink(missing_ok=True)
        info = self.info(failed)
        if info:
            boot.write_json_atomic(self.root / failed / "slot.json",
                                   {**info, "state": "bad", "reason": reason})
        boot.write_json_atomic(self.root / "boot.json", {})

    def install_launcher(self) -> None:
        """Copy the stdlib-only boot module to ``<root>/boot.py`` for ExecStartPre."""
        src = Path(boot.__file__).read_bytes()
        dst = self.root / "boot.py"
        if dst.is_file() and dst.read_bytes() == src:
            return
        tmp = self.root / f".tmp-boot-{os.getpid()}.py"
        tmp.write_bytes(src)
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dst)

    def cleanup(self) -> None:
        """Remove leftovers of interrupted work (trash, temp files)."""
        if not self.root.is_dir():
            return
        for p in self.root.iterdir():
            if p.name.startswith((".trash-", ".tmp-", ".current-")):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)

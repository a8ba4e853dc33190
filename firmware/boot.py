"""Boot-time slot selection with a boot counter; standard library only.

Runs before every start of the service (systemd ``ExecStartPre``, or the process launcher)
as ``python -m firmware.boot --root /opt/appliance``. The file has no imports outside the
standard library, so it also runs as a plain script copied to ``<root>/boot.py``, with the
system Python, even when the slot it would reject has a broken virtualenv.

Slot root layout::

    <root>/a/, <root>/b/     slots: slot.json + venv/ + wheels/
    <root>/current -> a      symlink to the slot that starts; replaced with os.replace
    <root>/boot.json         {"trial": "b", "previous": "a", "attempts": n} while a new
                             slot is on trial; {"state": "fell-back", ...} after a fallback
    <root>/.update.lock      flock held by a running apply

Rules, in order: a trial whose apply is no longer running (the lock is free) was
interrupted, so the previous slot starts; a trial started ``max_attempts`` times without
being committed is marked bad and the previous slot starts; otherwise the trial's attempt
counter goes up. Without a trial, ``current`` must point at a slot whose slot.json says
``ready`` or ``committed`` and whose interpreter exists, else the other slot is used.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SLOTS = ("a", "b")
GOOD_STATES = ("ready", "committed")
LOCK = ".update.lock"
DEFAULT_ATTEMPTS = 3


class BootError(Exception):
    """No slot can start."""


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object at ``path``, or None when missing or unreadable."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Temp file in the same directory, fsync, os.replace, fsync the directory.

    A standard-library copy of ``storage.files.write_json_atomic`` on purpose: this module
    runs at boot to choose a slot, before the box's packages in that slot can be trusted,
    so it imports nothing but the standard library."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def current_slot(root: Path) -> str | None:
    try:
        target = os.readlink(Path(root) / "current")
    except OSError:
        return None
    name = Path(target).name
    return name if name in SLOTS else None


def other(slot: str | None) -> str:
    return "b" if slot == "a" else "a"


def switch(root: Path, slot: str) -> None:
    """Point ``current`` at ``slot`` atomically (new symlink, then os.replace)."""
    if slot not in SLOTS:
        raise BootError(f"unknown slot {slot!r}")
    root = Path(root)
    tmp = root / f".current-{os.getpid()}-{time.time_ns()}"
    os.symlink(slot, tmp)
    try:
        os.replace(tmp, root / "current")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(root)


def slot_info(root: Path, slot: str) -> dict[str, Any] | None:
    return read_json(Path(root) / slot / "slot.json")


def slot_ok(root: Path, slot: str | None) -> bool:
    """A slot can start: complete slot.json in a good state and an interpreter present."""
    if slot not in SLOTS:
        return False
    info = slot_info(root, slot)
    return (info is not None and info.get("state") in GOOD_STATES
            and (Path(root) / slot / "venv" / "bin" / "python").exists())


def lock_held(root: Path) -> bool:
    """True while some apply holds ``<root>/.update.lock``; never creates the file."""
    try:
        fd = os.open(Path(root) / LOCK, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


@dataclass(frozen=True)
class Decision:
    """Which slot starts, why, and what has to change on disk for it."""

    slot: str
    reason: str
    switch_to: str | None = None
    boot: dict[str, Any] | None = None  # new boot.json; None means leave it
    mark_bad: str | None = None


def decide(root: Path, max_attempts: int = DEFAULT_ATTEMPTS,
           apply_running: bool | None = None) -> Decision:
    """Read the layout and decide; writes nothing."""
    root = Path(root)
    cur = current_slot(root)
    boot = read_json(root / "boot.json") or {}
    running = lock_held(root) if apply_running is None else apply_running
    trial, previous = boot.get("trial"), boot.get("previous")
    if trial in SLOTS and cur == trial:
        attempts = int(boot.get("attempts", 0))
        fallback = previous if slot_ok(root, previous) else None
        if not running and fallback:
            return Decision(fallback, f"update to slot {trial} was interrupted; "
                            f"starting previous slot {fallback}", fallback,
                            _fell_back(trial, fallback, attempts, "interrupted"))
        if attempts >= max_attempts and fallback:
            return Decision(fallback, f"slot {trial} failed to come up {attempts} times; "
                            f"falling back to slot {fallback}", fallback,
                            _fell_back(trial, fallback, attempts, "boot counter"), trial)
        if slot_ok(root, trial):
            return Decision(trial, f"slot {trial} on trial, start {attempts + 1} of "
                            f"{max_attempts}", None, {**boot, "attempts": attempts + 1})
    stale = {} if trial and not running else None  # an armed trial that never switched
    if slot_ok(root, cur):
        return Decision(cur, f"slot {cur} is current", None, stale)  # type: ignore[arg-type]
    alt = other(cur)
    if slot_ok(root, alt):
        return Decision(alt, f"slot {cur} is not startable; using slot {alt}", alt,
                        {} if trial else None)
    raise BootError(f"no startable slot under {root}")


def _fell_back(trial: str, to: str, attempts: int, why: str) -> dict[str, Any]:
    return {"state": "fell-back", "from": trial, "to": to, "attempts": attempts,
            "why": why, "at": int(time.time())}


def prepare(root: Path, max_attempts: int = DEFAULT_ATTEMPTS, dry_run: bool = False,
            apply_running: bool | None = None) -> Decision:
    """Decide and carry the decision out (unless ``dry_run``); return it."""
    d = decide(root, max_attempts, apply_running)
    if dry_run:
        return d
    root = Path(root)
    if d.mark_bad:
        info = slot_info(root, d.mark_bad) or {}
        write_json_atomic(root / d.mark_bad / "slot.json",
                          {**info, "state": "bad", "reason": d.reason})
    if d.boot is not None:
        write_json_atomic(root / "boot.json", d.boot)
    if d.switch_to:
        switch(root, d.switch_to)
    return d


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="firmware.boot", description=__doc__.split("\n")[0])
    parser.add_argument("--root", default=os.environ.get("APPLIANCE_SLOT_ROOT",
                                                         "/opt/appliance"))
    parser.add_argument("--max-attempts", type=int,
                        default=int(os.environ.get("APPLIANCE_BOOT_ATTEMPTS",
                                                   DEFAULT_ATTEMPTS)))
    parser.add_argument("--dry-run", action="store_true", help="decide, change nothing")
    args = parser.parse_args(argv)
    try:
        d = prepare(Path(args.root), args.max_attempts, args.dry_run)
    except (BootError, OSError) as exc:
        print(f"boot: {exc}", file=sys.stderr)
        return 1
    print(f"boot: {d.reason}", file=sys.stderr)
    print(d.slot)
    return 0


if __name__ == "__main__":
    sys.exit(main())

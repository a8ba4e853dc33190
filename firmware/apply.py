"""The update orchestrator: verify -> stage -> switch -> health -> commit, or roll back.

``Updater`` is the library entry point used by the CLI and the admin API. Everything is
verified (``reader.open_verified``) before anything is written; a refused bundle changes
nothing on disk and is reported only to the ``audit`` callback. After verification every
step is recorded in ``update_history`` and announced to ``progress`` as ``("step:<name>",
0, 0)``; byte progress comes as ``("verify"|"extract", done, total)``.

Release steps: lock, record, stage, venv, arm, switch, restart, health, commit, finish
(and revert instead of commit when the health check fails).
Models/config steps: lock, record, stage, install, commit.

For tests and fault drills the environment variable ``APPLIANCE_UPDATE_PAUSE_AT=<step>``
makes the process stop itself (SIGSTOP) just before that step.
"""

from __future__ import annotations

import fcntl
import logging
import os
import platform
import shutil
import signal
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from firmware import boot
from firmware.bundle import Limits, Manifest, parse_manifest
from firmware.errors import (
    ApplyError,
    BundleError,
    BundleExpiredError,
    DowngradeError,
    HealthCheckError,
    IncompatibleError,
    LimitError,
    LockedError,
    ServiceError,
    SlotError,
    UpdateError,
)
from firmware.health import HealthCheck
from firmware.reader import (
    VerifiedBundle,
    check_payloads,
    load_trusted_keys,
    open_verified,
    read_header,
)
from firmware.service import ServiceManager
from firmware.slots import Slots, SlotStatus
from firmware.state import HistoryEntry, UpdateState
from firmware.verify import BoxState, verify_manifest
from storage.db import DB_FILE
from storage.files import atomic_write

log = logging.getLogger(__name__)

Audit = Callable[[str, dict[str, Any]], None]
Progress = Callable[[str, int, int], None]
PAUSE_ENV = "APPLIANCE_UPDATE_PAUSE_AT"
RELEASE_STEPS = ("verify", "lock", "record", "stage", "venv", "arm", "switch", "restart",
                 "health", "commit", "finish")
OTHER_STEPS = ("verify", "lock", "record", "stage", "install", "commit")


@dataclass(frozen=True)
class ApplyResult:
    """How an apply or rollback ended; ``outcome`` is success, rolled-back or rollback."""

    id: int
    type: str
    version: str
    outcome: str
    reason: str = ""
    slot: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Inspection:
    """What ``inspect`` found: signature ok, the manifest, and why it would be refused."""

    manifest: Manifest
    key_id: str
    problem: str | None
    payloads_ok: bool


@dataclass(frozen=True)
class Status:
    """A consistent, read-only picture of the box's update state."""

    current: str | None
    slots: list[SlotStatus]
    boot: dict[str, Any]
    next_boot: str | None
    next_boot_reason: str
    apply_running: bool
    installed: dict[str, str]
    floors: dict[str, str]
    interrupted: list[HistoryEntry]
    last: HistoryEntry | None

    def to_json(self) -> dict[str, Any]:
        return {
            "current": self.current, "next_boot": self.next_boot,
            "next_boot_reason": self.next_boot_reason, "apply_running": self.apply_running,
            "installed": self.installed, "floors": self.floors, "boot": self.boot,
            "slots": [{"name": s.name, "state": s.state, "version": s.version,
                       "current": s.current} for s in self.slots],
            "interrupted": [e.to_json() for e in self.interrupted],
            "last": self.last.to_json() if self.last else None,
        }


def pause_hook_from_env() -> Callable[[str], None] | None:
    """A step hook that SIGSTOPs this process before the step named in the environment."""
    target = os.environ.get(PAUSE_ENV)
    if not target:
        return None

    def hook(step: str) -> None:
        if step == target:
            log.warning("pausing before step %s (%s)", step, PAUSE_ENV)
            os.kill(os.getpid(), signal.SIGSTOP)
    return hook


class PackStore(Protocol):
    """Where a models bundle's packs go: the box's model store, passed in by the box (the
    firmware layer never imports it)."""

    def install(self, pack_dir: Path) -> str:
        """Install the pack in ``pack_dir`` atomically, replacing one of the same name;
        return its name. Raises ApplyError naming the pack when it is refused."""
        ...

    def cleanup(self) -> None:
        """Remove what an interrupted install left behind."""
        ...


class Updater:
    """Applies bundles to one box: ``data_dir`` (database, models, appliance.toml) and the
    A/B slot ``root``. All collaborators are injected; defaults suit the real box."""

    def __init__(self, data_dir: Path, root: Path | None = None, *,
                 trusted: Mapping[str, bytes] | None = None,
                 service: ServiceManager | None = None,
                 health: HealthCheck | None = None,
                 limits: Limits | None = None, arch: str | None = None,
                 audit: Audit | None = None, progress: Progress | None = None,
                 clock: Callable[[], datetime] | None = None,
                 config_path: Path | None = None, packs: PackStore | None = None,
                 step_hook: Callable[[str], None] | None = None,
                 max_boot_attempts: int = boot.DEFAULT_ATTEMPTS,
                 python: str | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.root = Path(root) if root else self.data_dir / "slots"
        self.trusted = dict(trusted) if trusted is not None else load_trusted_keys()
        self.service = service
        self.health = health or HealthCheck()
        self.limits = limits or Limits()
        self.arch = arch or platform.machine()
        self.audit = audit
        self.progress = progress
        self.clock = clock or (lambda: datetime.now(UTC))
        self.config_path = Path(config_path) if config_path else self.data_dir / "appliance.toml"
        self.packs = packs
        self.step_hook = step_hook if step_hook is not None else pause_hook_from_env()
        self.max_boot_attempts = max_boot_attempts
        self.state = UpdateState(self.data_dir / DB_FILE)
        self.slots = Slots(self.root, python=python)

    # --- helpers ----------------------------------------------------------------------
    def _emit(self, action: str, details: dict[str, Any]) -> None:
        if self.audit is not None:
            try:
                self.audit(action, details)
            except Exception:  # the audit sink must never break an update
                log.exception("audit callback failed for %s", action)

    def _step(self, name: str, row: int | None = None) -> None:
        if self.step_hook is not None:
            self.step_hook(name)
        if self.progress:
            self.progress(f"step:{name}", 0, 0)
        if row is not None:
            self.state.step(row, name)

    def box_state(self) -> BoxState:
        installed, floors = self.state.versions()
        release = self.slots.version(self.slots.current())
        if release:
            installed = {**installed, "release": release}
        return BoxState(self.arch, installed, floors)

    def _check_space(self, m: Manifest) -> None:
        """Refuse before writing when the disk cannot hold the payloads (x2 for staging)."""
        target = self.root if m.type == "release" else self.data_dir
        probe = next((p for p in (target, *target.parents) if p.exists()), Path("/"))
        free = shutil.disk_usage(probe).free
        if free < 2 * m.payload_size + self.limits.min_free_space:
            raise LimitError(f"not enough free space on {probe}: {free} bytes free, the "
                             f"{m.type} bundle needs about {2 * m.payload_size}")

    @contextmanager
    def _lock(self) -> Iterator[None]:
        self.slots.ensure()
        fd = os.open(self.root / boot.LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                raise LockedError("another update is in progress") from exc
            yield
        finally:
            os.close(fd)

    # --- read-only --------------------------------------------------------------------
    def inspect(self, path: Path) -> Inspection:
        """Verify the signature, report policy problems, and check payload hashes."""
        header, size = read_header(Path(path), self.limits)
        problem = None
        try:
            manifest = verify_manifest(header, self.trusted, self.clock(), self.box_state(),
                                       self.limits)
        except (BundleExpiredError, IncompatibleError, DowngradeError) as exc:
            manifest, problem = parse_manifest(header.manifest_bytes, self.limits), str(exc)
        try:
            check_payloads(Path(path), header, manifest, size, self.progress)
            payloads_ok = True
        except BundleError as exc:
            payloads_ok, problem = False, problem or str(exc)
        return Inspection(manifest, header.kid, problem, payloads_ok)

    def history(self, limit: int = 50) -> list[HistoryEntry]:
        return self.state.history(limit)

    def status(self) -> Status:
        running = boot.lock_held(self.root)
        try:
            d = boot.decide(self.root, self.max_boot_attempts)
            next_boot, reason = d.slot, d.reason
        except boot.BootError as exc:
            next_boot, reason = None, str(exc)
        installed, floors = self.state.versions()
        release = self.slots.version(self.slots.current())
        if release:
            installed["release"] = release
        hist = self.state.history(1)
        return Status(self.slots.current(), self.slots.status(), self.slots.boot_state(),
                      next_boot, reason, running, installed, floors,
                      [] if running else self.state.unfinished(), hist[0] if hist else None)

    # --- apply ------------------------------------------------------------------------
    def apply(self, path: Path) -> ApplyResult:
        """Verify ``path`` completely, then install it; see the module docstring."""
        self._step("verify")
        try:
            bundle = open_verified(Path(path), self.trusted, self.clock(), self.box_state(),
                                   self.limits, self.progress)
            self._check_space(bundle.manifest)
        except BundleError as exc:
            self._emit("update.refused", {"bundle": Path(path).name, "reason": str(exc),
                                          "error": type(exc).__name__})
            raise
        m = bundle.manifest
        if m.type == "release":
            self._service().preflight()
        self._step("lock")
        with self._lock():
            self._recover_locked()
            row = self.state.start(m.type, m.version, bundle.path.name, bundle.header.kid,
                                   "record")
            self._step("record", row)
            self._emit("update.started", {"id": row, "type": m.type, "version": m.version,
                                          "key_id": bundle.header.kid})
            try:
                apply_one = {"release": self._apply_release, "models": self._apply_models,
                             "config": self._apply_config}[m.type]
                result = apply_one(bundle, row)
            except BaseException as exc:
                reason = str(exc) or type(exc).__name__
                self.state.finish(row, "failed", reason)
                self._emit("update.failed", {"id": row, "type": m.type,
                                             "version": m.version, "reason": reason})
                try:  # e.g. a trial slot left switched in: go back to the committed one
                    self._recover_locked()
                except Exception:
                    log.exception("recovery after a failed apply failed")
                if isinstance(exc, UpdateError) or not isinstance(exc, Exception):
                    raise
                raise ApplyError(reason) from exc
        self._emit(f"update.{result.outcome.replace('-', '_')}",
                   {"id": row, "type": m.type, "version": m.version, "reason": result.reason})
        return result

    def _apply_release(self, bundle: VerifiedBundle, row: int) -> ApplyResult:
        m = bundle.manifest
        previous = self.slots.current()
        target = boot.other(previous)
        self._step("stage", row)
        try:
            self.slots.install_release(bundle, target, self.progress,
                                       step=lambda s: self._step(s, row))
        except Exception:
            self.slots.clear(target)
            raise
        self._step("arm", row)
        self.slots.arm(target, previous)
        self._step("switch", row)
        self.slots.switch(target)
        self._step("restart", row)
        try:
            service = self._service()
            service.restart()
            self._step("health", row)
            self.health.run(alive=service.is_running)
            if self.slots.current() != target:
                raise HealthCheckError(f"the boot counter fell back from slot {target}")
        except ApplyError as exc:
            reason = f"health check failed on slot {target}: {exc}; rolled back to " \
                     f"{f'slot {previous}' if previous else 'no slot'}"
            log.warning("%s", reason)
            self._step("revert", row)
            self.slots.revert(previous, target, str(exc))
            self._restart_quietly()
            self.state.finish(row, "rolled-back", reason)
            return ApplyResult(row, m.type, m.version, "rolled-back", reason, previous)
        self._step("commit", row)
        self.slots.commit(target)
        self._step("finish", row)
        self.state.set_installed("release", m.version)
        self.state.finish(row, "success", f"slot {target} committed")
        return ApplyResult(row, m.type, m.version, "success", f"slot {target}", target)

    def _service(self) -> ServiceManager:
        if self.service is None:
            raise ServiceError("no service manager configured; a release cannot be applied "
                               "without restarting the service")
        return self.service

    def _restart_quietly(self) -> None:
        try:
            if self.slots.current():
                self._service().restart()
            elif self.service is not None:
                self.service.stop()
        except ServiceError as exc:
            log.error("restarting the service after rollback failed: %s", exc)

    @contextmanager
    def _staging(self) -> Iterator[Path]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        staging = self.data_dir / f".update-staging-{time.time_ns()}"
        staging.mkdir()
        try:
            yield staging
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _apply_models(self, bundle: VerifiedBundle, row: int) -> ApplyResult:
        m = bundle.manifest
        if self.packs is None:
            raise ApplyError("this updater has no model store to install packs into; "
                             "apply model bundles with the box's appliance-update command")
        with self._staging() as staging:
            self._step("stage", row)
            bundle.extract(staging, self.progress)
            packs = sorted(p for p in (staging / "models").iterdir()) \
                if (staging / "models").is_dir() else []
            if not packs:
                raise ApplyError("the models bundle carries no model packs")
            self._step("install", row)
            names = [self.packs.install(pack) for pack in packs]
        self._step("commit", row)
        self.state.set_installed("models", m.version)
        reason = f"installed {', '.join(names)}"
        self.state.finish(row, "success", reason)
        return ApplyResult(row, m.type, m.version, "success", reason)

    def _apply_config(self, bundle: VerifiedBundle, row: int) -> ApplyResult:
        m = bundle.manifest
        with self._staging() as staging:
            self._step("stage", row)
            bundle.extract(staging, self.progress)
            new = (staging / "config" / "appliance.toml").read_bytes()
            try:
                tomllib.loads(new.decode())
            except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
                raise ApplyError(f"appliance.toml in the bundle is not valid TOML: {exc}") \
                    from exc
            self._step("install", row)
            cfg = self.config_path
            cfg.parent.mkdir(parents=True, exist_ok=True)
            if cfg.is_file():
                atomic_write(self._config_backup(), cfg.read_bytes(), 0o644)
            atomic_write(cfg, new, 0o644)
        self._step("commit", row)
        self.state.set_installed("config", m.version)
        self.state.finish(row, "success", f"replaced {cfg}")
        return ApplyResult(row, m.type, m.version, "success", f"replaced {cfg}")

    def _config_backup(self) -> Path:
        return self.config_path.with_name(self.config_path.name + ".prev")

    # --- rollback and recovery ----------------------------------------------------------
    def rollback(self, kind: str = "release") -> ApplyResult:
        """Go back to the other slot (release) or the previous appliance.toml (config)."""
        with self._lock():
            self._recover_locked()
            if kind == "config":
                return self._rollback_config()
            if kind != "release":
                raise SlotError(f"cannot roll back {kind!r}; only release or config")
            cur = self.slots.current()
            prev = boot.other(cur)
            info = self.slots.info(prev)
            if not boot.slot_ok(self.root, prev) or info.get("state") != "committed":
                raise SlotError(f"slot {prev} holds no committed release to roll back to")
            version = info["version"]
            row = self.state.start("release", version, info.get("bundle"), info.get("key_id"),
                                   "switch")
            self.slots.arm(prev, cur)
            self.slots.switch(prev)
            try:
                service = self._service()
                service.restart()
                self.health.run(alive=service.is_running)
            except ApplyError as exc:
                self.slots.revert(cur, prev, str(exc))
                self._restart_quietly()
                reason = f"rollback to slot {prev} failed its health check: {exc}"
                self.state.finish(row, "failed", reason)
                self._emit("update.rollback_failed", {"id": row, "reason": reason})
                raise ApplyError(reason) from exc
            self.slots.commit(prev)
            self.state.set_installed("release", version, raise_floor=False)
            reason = f"manual rollback from slot {cur} to slot {prev}"
            self.state.finish(row, "rollback", reason)
            self._emit("update.rollback", {"id": row, "version": version, "reason": reason})
            return ApplyResult(row, "release", version, "rollback", reason, prev)

    def _rollback_config(self) -> ApplyResult:
        backup = self._config_backup()
        if not backup.is_file():
            raise SlotError(f"no previous configuration ({backup}) to roll back to")
        row = self.state.start("config", "previous", backup.name, None, "install")
        old, cur = backup.read_bytes(), self.config_path.read_bytes()
        atomic_write(self.config_path, old, 0o644)
        atomic_write(backup, cur, 0o644)
        reason = f"restored {self.config_path} from {backup.name}"
        self.state.finish(row, "rollback", reason)
        self._emit("update.rollback", {"id": row, "type": "config", "reason": reason})
        return ApplyResult(row, "config", "previous", "rollback", reason)

    def recover(self) -> list[str]:
        """Repair what an interrupted apply left; returns what was done."""
        with self._lock():
            return self._recover_locked()

    def _recover_locked(self) -> list[str]:
        done = []
        for entry in self.state.unfinished():
            cur = self.slots.current()
            info = self.slots.info(cur) if cur else {}
            if (entry.type == "release" and info.get("state") == "committed"
                    and info.get("version") == entry.bundle_version
                    and info.get("bundle") == entry.bundle):
                self.state.set_installed("release", entry.bundle_version)
                self.state.finish(entry.id, "success", "committed; recorded at recovery")
            else:
                self.state.finish(entry.id, "interrupted",
                                  f"interrupted before step {entry.step} finished")
            done.append(f"history {entry.id}: marked finished")
        if boot.current_slot(self.root) or self.slots.boot_state():
            try:
                d = boot.prepare(self.root, self.max_boot_attempts, apply_running=False)
                if d.switch_to or d.boot is not None:
                    done.append(d.reason)
            except boot.BootError as exc:
                log.warning("recovery: %s", exc)
        for s in boot.SLOTS:
            if (self.root / s).exists() and not self.slots.info(s) \
                    and s != self.slots.current():
                self.slots.clear(s)
                done.append(f"removed half-installed slot {s}")
        self.slots.cleanup()
        if self.data_dir.is_dir():
            for p in self.data_dir.glob(".update-staging-*"):
                shutil.rmtree(p, ignore_errors=True)
        if self.packs is not None:
            self.packs.cleanup()
        for line in done:
            log.info("recovery: %s", line)
        return done

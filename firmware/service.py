"""Restarting the box's service on whatever slot ``current`` points to.

``ServiceManager`` is the interface the orchestrator uses. ``SystemdServiceManager`` drives
``appliance.service`` with systemctl (its ExecStartPre runs ``firmware.boot``);
``ProcessServiceManager`` does the same job without an init system: it runs the boot
decision itself, then starts the slot's command (configurable, default
``{venv}/bin/appliance serve --foreground``) as a detached subprocess with a pid file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path

from firmware import boot
from firmware.errors import ServiceError

log = logging.getLogger(__name__)

DEFAULT_COMMAND = ("{venv}/bin/appliance", "serve", "--foreground")


class ServiceManager(ABC):
    """Controls the one service of the box."""

    def preflight(self) -> None:
        """Raise ServiceError if restarting cannot work here (checked before any write)."""
        return None

    @abstractmethod
    def restart(self) -> None:
        """Stop the service if running and start it on the slot ``current`` selects
        (through the boot decision). Raises ServiceError when it cannot be started."""

    @abstractmethod
    def stop(self) -> None:
        """Stop the service; no error when it is not running."""

    @abstractmethod
    def is_running(self) -> bool:
        """True while the service process is alive."""

    def pid(self) -> int | None:
        """Pid of the service process this manager started, None when unknown."""
        return None


class SystemdServiceManager(ServiceManager):
    """``systemctl restart|stop|is-active <unit>``."""

    def __init__(self, unit: str = "appliance.service", systemctl: str = "systemctl",
                 timeout: float = 120.0) -> None:
        self.unit, self.systemctl, self.timeout = unit, systemctl, timeout

    def _ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run([self.systemctl, *args, self.unit], capture_output=True,
                                  text=True, timeout=self.timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ServiceError(f"systemctl {args[0]} {self.unit} failed: {exc}") from exc

    def preflight(self) -> None:
        if shutil.which(self.systemctl) is None:
            raise ServiceError(f"{self.systemctl} not found; on a box without systemd use the "
                               "process service manager (--service process)")

    def restart(self) -> None:
        proc = self._ctl("restart")
        if proc.returncode != 0:
            raise ServiceError(f"systemctl restart {self.unit} failed: "
                               f"{proc.stderr.strip()[-400:]}")

    def stop(self) -> None:
        self._ctl("stop")

    def is_running(self) -> bool:
        """Active, or activating: systemd restarts count as alive so that the boot
        counter, not this check, decides when a trial slot has failed too often."""
        state = self._ctl("is-active").stdout.strip()
        return state in ("active", "activating", "reloading")

    def pid(self) -> int | None:
        proc = self._ctl("show", "--property=MainPID", "--value")
        text = proc.stdout.strip()
        return int(text) if proc.returncode == 0 and text.isdigit() and text != "0" else None


class ProcessServiceManager(ServiceManager):
    """Runs the current slot's command as a detached process tracked by a pid file.

    ``command`` items are formatted with ``root``, ``slot`` (the slot directory) and
    ``venv`` (its virtualenv). Output goes to ``<root>/service.log``.
    """

    def __init__(self, root: Path, command: Sequence[str] = DEFAULT_COMMAND,
                 env: Mapping[str, str] | None = None,
                 max_attempts: int = boot.DEFAULT_ATTEMPTS, stop_timeout: float = 10.0) -> None:
        self.root = Path(root)
        self.command = tuple(command)
        self.env = dict(env) if env is not None else None
        self.max_attempts = max_attempts
        self.stop_timeout = stop_timeout
        self.pidfile = self.root / "service.pid"
        self._proc: subprocess.Popen[bytes] | None = None

    def restart(self) -> None:
        self.stop()
        try:
            decision = boot.prepare(self.root, self.max_attempts)
        except (boot.BootError, OSError) as exc:
            raise ServiceError(f"no slot can start: {exc}") from exc
        log.info("boot: %s", decision.reason)
        slot = self.root / decision.slot
        cmd = [c.format(root=self.root, slot=slot, venv=slot / "venv") for c in self.command]
        env = {**os.environ, **(self.env or {})}
        with (self.root / "service.log").open("ab") as out:
            try:
                self._proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL, env=env,
                                              start_new_session=True, cwd=slot)
            except OSError as exc:
                raise ServiceError(f"cannot start {cmd[0]}: {exc}") from exc
        boot.write_json_atomic(self.pidfile, {"pid": self._proc.pid,
                                              "start": _start_time(self._proc.pid),
                                              "slot": decision.slot})
        log.info("started %s (pid %d) on slot %s", cmd[0], self._proc.pid, decision.slot)

    def _pid(self) -> int | None:
        data = boot.read_json(self.pidfile) or {}
        pid = data.get("pid")
        if not isinstance(pid, int) or _start_time(pid) != data.get("start"):
            return None
        return pid

    def pid(self) -> int | None:
        return self._pid()

    def is_running(self) -> bool:
        if self._proc is not None and self._proc.poll() is not None:
            return False
        pid = self._pid()
        return pid is not None and _alive(pid)

    def stop(self) -> None:
        pid = self._pid()
        if pid is not None and _alive(pid):
            _signal_group(pid, signal.SIGTERM)
            deadline = time.monotonic() + self.stop_timeout
            while _alive(pid) and time.monotonic() < deadline:
                if self._proc is not None and self._proc.pid == pid:
                    self._proc.poll()
                time.sleep(0.05)
            if _alive(pid):
                _signal_group(pid, signal.SIGKILL)
        if self._proc is not None:
            try:
                self._proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                log.warning("service process %d did not exit", self._proc.pid)
            self._proc = None
        self.pidfile.unlink(missing_ok=True)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except OSError:
        with contextlib.suppress(OSError):
            os.kill(pid, sig)


def _start_time(pid: int) -> int | None:
    """Process start time in clock ticks (guards against pid reuse); None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")

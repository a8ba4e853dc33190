"""``appliance-update``: build, inspect, apply, status, rollback, history, recover.

Errors print one line and exit non-zero (1: refused or failed, 2: usage); never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shlex
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from firmware.bundle import TYPES, format_time, parse_time
from firmware.errors import UpdateError
from firmware.health import HealthCheck
from firmware.service import (
    DEFAULT_COMMAND,
    ProcessServiceManager,
    ServiceManager,
    SystemdServiceManager,
)

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def _expires(text: str) -> datetime:
    """``2027-01-31``, ``2027-01-31T00:00:00Z`` or ``+90d``."""
    if m := re.fullmatch(r"\+(\d+)d", text):
        return datetime.now(UTC).replace(microsecond=0) + timedelta(days=int(m.group(1)))
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        text += "T00:00:00Z"
    return parse_time(text, "--expires")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="appliance-update",
                                description="Signed offline update bundles with A/B slots.")
    p.add_argument("--data-dir", type=Path,
                   default=Path(os.environ.get("APPLIANCE_DATA_DIR", "data")))
    p.add_argument("--root", type=Path, default=None,
                   help="A/B slot root (default $APPLIANCE_SLOT_ROOT, /opt/appliance if it "
                        "holds slots, else <data-dir>/slots)")
    p.add_argument("--keys", type=Path, default=None,
                   help="directory of trusted *.pub vendor keys (default licensing/keys)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="cmd", required=True)

    b = sub.add_parser("build", help="vendor side: build and sign a bundle")
    b.add_argument("--type", required=True, choices=TYPES)
    b.add_argument("--version", required=True)
    b.add_argument("--min-version", default="0")
    b.add_argument("--arch", action="append", default=None,
                   help="compatible arch (repeat or comma-separate; default any)")
    b.add_argument("--expires", required=True, type=_expires,
                   help="YYYY-MM-DD, full UTC time, or +Nd")
    b.add_argument("--key", required=True, type=Path, help="vendor Ed25519 private key (PEM)")
    b.add_argument("--allow-downgrade", action="store_true")
    b.add_argument("--description", default="")
    b.add_argument("-o", "--out", required=True, type=Path)
    b.add_argument("paths", nargs="+", type=Path,
                   help="wheels or wheel dirs (release), model pack dirs (models), a toml")

    i = sub.add_parser("inspect", help="verify a bundle and show its manifest")
    i.add_argument("file", type=Path)

    a = sub.add_parser("apply", help="verify and install a bundle")
    a.add_argument("file", type=Path)
    _service_args(a)

    r = sub.add_parser("rollback", help="return to the previous release or configuration")
    r.add_argument("--type", choices=("release", "config"), default="release")
    _service_args(r)

    sub.add_parser("status", help="slots, versions, boot state")
    h = sub.add_parser("history", help="update history")
    h.add_argument("--limit", type=int, default=20)
    sub.add_parser("recover", help="repair what an interrupted apply left behind")
    return p


def _service_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--service", choices=("systemd", "process", "none"),
                   default=os.environ.get("APPLIANCE_SERVICE", "systemd"))
    p.add_argument("--unit", default="appliance.service")
    p.add_argument("--command", default=os.environ.get("APPLIANCE_SERVICE_COMMAND"),
                   help="process service command; {venv}, {slot}, {root} are filled in")
    p.add_argument("--health-url",
                   default=os.environ.get("APPLIANCE_HEALTH_URL", "http://127.0.0.1:8080"))
    p.add_argument("--health-timeout", type=float, default=120.0)
    p.add_argument("--model", default=None, help="model for the inference probe")
    p.add_argument("--no-inference", action="store_true", help="check /readyz only")
    p.add_argument("--boot-attempts", type=int, default=3)


def _root(args: argparse.Namespace) -> Path:
    if args.root:
        return args.root
    if env := os.environ.get("APPLIANCE_SLOT_ROOT"):
        return Path(env)
    if Path("/opt/appliance/current").is_symlink():
        return Path("/opt/appliance")
    return args.data_dir / "slots"


def _updater(args: argparse.Namespace, progress: Any = None) -> Any:
    from firmware.apply import Updater
    from firmware.reader import load_trusted_keys

    root = _root(args)
    kwargs: dict[str, Any] = {}
    if getattr(args, "service", "none") != "none":
        service: ServiceManager
        if args.service == "systemd":
            service = SystemdServiceManager(args.unit)
        else:
            command = shlex.split(args.command) if args.command else None
            service = ProcessServiceManager(root, command or DEFAULT_COMMAND,
                                            max_attempts=args.boot_attempts)
        kwargs["service"] = service
        # never the admin key: a one-time token only the probe route accepts (firmware.health)
        kwargs["health"] = HealthCheck(
            base_url=args.health_url, timeout=args.health_timeout,
            token_dir=args.data_dir, inference=not args.no_inference,
            model=args.model, pid=service.pid)
        kwargs["max_boot_attempts"] = args.boot_attempts
    packs = getattr(args, "packs", None)  # the box's model store, when the box runs us
    if packs is not None:
        kwargs["packs"] = packs(Path(args.data_dir) / "models")
    return Updater(args.data_dir, root, trusted=load_trusted_keys(args.keys),
                   progress=progress, **kwargs)


class _Bars:
    """Rich progress bars for verify/extract and one line per step."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bars = Progress(TextColumn("{task.description:>8}"), BarColumn(),
                             DownloadColumn(), TimeRemainingColumn(), console=err)
        self.tasks: dict[str, Any] = {}

    def __call__(self, label: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        if label.startswith("step:"):
            self.bars.console.print(f"[dim]· {label[5:]}[/]")
            return
        if label not in self.tasks:
            self.tasks[label] = self.bars.add_task(label, total=total or 1)
        self.bars.update(self.tasks[label], completed=done, total=total or 1)

    def __enter__(self) -> _Bars:
        if self.enabled:
            self.bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.bars.stop()


def _print_json(data: Any) -> None:
    out.print_json(json.dumps(data, default=str))


def _cmd_build(args: argparse.Namespace) -> int:
    from firmware.build import build_bundle, collect_payloads
    from licensing.crypto import SigningKey

    key = SigningKey.from_pem(args.key.read_bytes())
    arch = [a for item in (args.arch or ["any"]) for a in item.split(",") if a]
    files = collect_payloads(args.type, args.paths)
    m = build_bundle(args.out, bundle_type=args.type, version=args.version, key=key,
                     files=files, expires=args.expires, min_version=args.min_version,
                     arch=arch, allow_downgrade=args.allow_downgrade,
                     description=args.description)
    out.print(f"built {args.out}: {m.type} {m.version}, {len(m.payloads)} payloads, "
              f"{m.payload_size} bytes, key {key.key_id}")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    with _Bars(not args.json) as bars:
        insp = _updater(args, bars).inspect(args.file)
    m = insp.manifest
    data = {"type": m.type, "version": m.version, "min_version": m.min_version,
            "arch": list(m.arch), "created": format_time(m.created),
            "expires": format_time(m.expires), "allow_downgrade": m.allow_downgrade,
            "key_id": insp.key_id, "payloads": [p.__dict__ for p in m.payloads],
            "signature": "ok", "payloads_ok": insp.payloads_ok, "problem": insp.problem}
    if args.json:
        _print_json(data)
    else:
        t = Table("path", "size", "sha256", title=f"{m.type} {m.version} (key {insp.key_id})")
        for p in m.payloads:
            t.add_row(p.path, str(p.size), p.sha256[:16] + "…")
        out.print(t)
        out.print(f"min version {m.min_version} · arch {', '.join(m.arch)} · created "
                  f"{format_time(m.created)} · expires {format_time(m.expires)}"
                  + (" · signed downgrade" if m.allow_downgrade else ""))
        out.print("[green]signature ok, payloads ok, applicable[/]" if insp.problem is None
                  else f"[red]would be refused: {insp.problem}[/]")
    return 0 if insp.problem is None else 1


def _cmd_apply(args: argparse.Namespace) -> int:
    with _Bars(not args.json) as bars:
        result = _updater(args, bars).apply(args.file)
    if args.json:
        _print_json(result.to_json())
    else:
        colour = "green" if result.outcome == "success" else "red"
        out.print(f"[{colour}]{result.type} {result.version}: {result.outcome}[/] "
                  f"{result.reason}")
    return 0 if result.outcome == "success" else 1


def _cmd_rollback(args: argparse.Namespace) -> int:
    result = _updater(args).rollback(args.type)
    if args.json:
        _print_json(result.to_json())
    else:
        out.print(f"rolled back to {result.type} {result.version}: {result.reason}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    st = _updater(args).status()
    data = st.to_json()
    if args.json:
        _print_json(data)
        return 0
    t = Table("slot", "state", "version", "current")
    for s in st.slots:
        t.add_row(s.name, s.state, s.version or "-", "←" if s.current else "")
    out.print(t)
    out.print(f"next start: {st.next_boot or 'none'} ({st.next_boot_reason})")
    for kind, ver in sorted(st.installed.items()):
        out.print(f"installed {kind}: {ver} (minimum {st.floors.get(kind, '-')})")
    if st.apply_running:
        out.print("[yellow]an update is in progress[/]")
    for e in st.interrupted:
        out.print(f"[yellow]update {e.id} ({e.type} {e.bundle_version}) was interrupted at "
                  f"step {e.step}; run `appliance-update recover`[/]")
    return 0


def _cmd_history(args: argparse.Namespace) -> int:
    rows = _updater(args).history(args.limit)
    if args.json:
        _print_json([r.to_json() for r in rows])
        return 0
    t = Table("id", "type", "version", "started", "finished", "outcome", "reason")
    for r in rows:
        t.add_row(str(r.id), r.type, r.bundle_version, r.started, r.finished or "-",
                  r.outcome or "(running)", r.reason or "")
    out.print(t)
    return 0


def _cmd_recover(args: argparse.Namespace) -> int:
    done = _updater(args).recover()
    out.print("\n".join(done) if done else "nothing to recover")
    return 0


def main(argv: list[str] | None = None, packs: Callable[[Path], Any] | None = None) -> int:
    """Run the command; ``packs(models_dir)`` builds where model bundles install (the box
    passes its model store; without it, model bundles are refused)."""
    args = _parser().parse_args(argv)
    args.packs = packs
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from licensing.errors import LicenseError

    handlers = {"build": _cmd_build, "inspect": _cmd_inspect, "apply": _cmd_apply,
                "rollback": _cmd_rollback, "status": _cmd_status, "history": _cmd_history,
                "recover": _cmd_recover}
    try:
        return handlers[args.cmd](args)
    except (UpdateError, LicenseError) as exc:
        err.print(f"[red]error:[/] {type(exc).__name__}: {exc}", highlight=False)
        return 1
    except OSError as exc:
        err.print(f"[red]error:[/] {exc.strerror or exc}: {exc.filename or ''}",
                  highlight=False)
        return 1
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except Exception as exc:  # last resort: one line, never a traceback
        logging.getLogger(__name__).debug("unexpected error", exc_info=True)
        err.print(f"[red]error:[/] unexpected {type(exc).__name__}: {exc} (run with -v "
                  "and check the log)", highlight=False)
        return 1


if __name__ == "__main__":
    sys.exit(main())

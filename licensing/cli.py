"""``appliance-license``: offline activation on the box and licence issuing for the vendor.

Box:    request > req.json · import activation.json · status [--json] · deactivate --yes
        ack-clock · admin-key (recovery: a new admin API key in <data-dir>/admin.key)
Vendor: keygen --out DIR · issue --request req.json ... --key vendor.pem · inspect FILE

Every failure prints one ``error: ...`` line on stderr and exits non-zero (2 for a bad
file or argument, 1 for a local I/O problem); never a traceback.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import sqlite_utils

from licensing.activation import Activation, default_data_dir, read_document, vendor_keys
from licensing.errors import LicenseError
from licensing.fingerprint import collect_facts
from licensing.guard import GuardStatus, LicenseGuard
from licensing.issuer import inspect, issue, keygen, load_signing_key, parse_request
from storage.db import DB_FILE
from storage.db import open_db as storage_open_db
from storage.files import atomic_write, ensure_dir

log = logging.getLogger(__name__)


def open_db(data_dir: Path) -> sqlite_utils.Database:
    """Open ``<data_dir>/appliance.db`` the way the box does (``storage.db.open_db``)."""
    ensure_dir(data_dir)
    return storage_open_db(data_dir / DB_FILE)


def _when(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC") if ts else "-"


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _emit(data: bytes | str, out: str | None) -> None:
    if isinstance(data, str):
        data = data.encode()
    if out:
        atomic_write(Path(out), data, mode=0o600)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()


def format_status(st: GuardStatus) -> str:
    lic = st.licence
    lines = [f"Licence:      {st.label}"]
    if lic.licence_id:
        lines += [
            f"Licence id:   {lic.licence_id}" + ("  (EVALUATION)" if lic.evaluation else ""),
            f"Customer:     {lic.customer}",
            f"Seats:        {st.seats_used} used of {lic.seats}",
            f"Models:       {', '.join(lic.models)}",
            f"Features:     {', '.join(lic.features)}",
            f"Valid:        {_when(lic.valid_from)} .. {_when(lic.expires_at)}",
            f"Days left:    {lic.days_left}",
            f"Grace left:   {lic.grace_days_left} day(s), until {_when(lic.grace_ends_at)}",
            f"Fingerprint:  {lic.fingerprint}",
        ]
    lines.append(f"Status:       {lic.message}")
    lines.append(f"Clock:        {'LOCKED: ' + st.clock_locked if st.clock_locked else 'ok'}")
    lines.append(f"Trusted time: {_when(st.trusted_time)}")
    return "\n".join(lines) + "\n"


class Context:
    """What the subcommands need; injectable for tests."""

    def __init__(
        self,
        args: argparse.Namespace,
        trusted_keys: Mapping[str, bytes] | None,
        facts: Callable[[], Mapping[str, str]],
        clock: Callable[[], float],
    ) -> None:
        self.args, self.facts, self.clock = args, facts, clock
        self.trusted = dict(vendor_keys() if trusted_keys is None else trusted_keys)
        self.data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()

    def guard(self) -> LicenseGuard:
        return LicenseGuard(
            self.data_dir, open_db(self.data_dir), trusted_keys=self.trusted,
            clock=self.clock, facts=self.facts, tolerance=self.args.tolerance_hours * 3600,
        )  # fmt: skip


def cmd_request(ctx: Context) -> int:
    act = Activation(ctx.data_dir, ctx.trusted, clock=ctx.clock, facts=ctx.facts)
    req = act.make_request()
    _emit(json.dumps(req, indent=2, sort_keys=True) + "\n", ctx.args.out)
    return 0


def cmd_issue(ctx: Context) -> int:
    a = ctx.args
    request = parse_request(read_document(Path(a.request)))
    key = load_signing_key(Path(a.key))
    data = issue(
        request, key, customer=a.customer, seats=a.seats, days=a.days, models=a.models,
        features=a.features, grace_days=a.grace_days, licence_id=a.licence_id,
        now=int(ctx.clock()),
    )  # fmt: skip
    _emit(data, a.out)
    return 0


def cmd_keygen(ctx: Context) -> int:
    pem, pub, kid = keygen(Path(ctx.args.out))
    print(f"key id:      {kid}")
    print(f"private key: {pem}  (keep offline; never commit or ship it)")
    print(f"public key:  {pub}  (ship as licensing/keys/{kid}.pub)")
    return 0


def cmd_inspect(ctx: Context) -> int:
    trusted = dict(ctx.trusted)
    info = inspect(read_document(Path(ctx.args.file)), trusted)
    for k in ("valid_from", "expires_at", "issued_at", "created_at", "deactivated_at"):
        if isinstance(info.get(k), int):
            info[k] = f"{info[k]} ({_when(info[k])})"
    print(json.dumps(info, indent=2, sort_keys=True))
    return 0


def cmd_import(ctx: Context) -> int:
    data = read_document(Path(ctx.args.file))
    # Refuse a bad file before opening the box's state (database, clock): a refused
    # import leaves the data directory exactly as it was.
    Activation(ctx.data_dir, ctx.trusted, clock=ctx.clock, facts=ctx.facts).verify(data)
    st = ctx.guard().import_licence(_actor(), data)
    print(f"imported licence {st.licence.licence_id}")
    print(format_status(st), end="")
    return 0


def cmd_status(ctx: Context) -> int:
    st = ctx.guard().status()
    if ctx.args.json:
        print(json.dumps(st.to_json(), indent=2, sort_keys=True))
    else:
        print(format_status(st), end="")
    return 0 if st.licence.serves_inference and not st.clock_locked else 3


def cmd_deactivate(ctx: Context) -> int:
    if not ctx.args.yes:
        print("error: deactivation removes the licence from this box; add --yes", file=sys.stderr)
        return 2
    receipt = ctx.guard().deactivate(_actor())
    _emit(receipt, ctx.args.out)
    print("licence removed; send the receipt to the vendor to move it", file=sys.stderr)
    return 0


def cmd_admin_key(ctx: Context) -> int:
    """Recovery: a new key for an admin seat (created if none), written to admin.key."""
    guard = ctx.guard()
    admins = [s for s in guard.seats.list_seats() if s.role == "admin"]
    if ctx.args.seat:
        admins = [s for s in admins if s.name == ctx.args.seat]
        if not admins:
            print(f"error: no admin seat named {ctx.args.seat!r}", file=sys.stderr)
            return 2
    seat = admins[0] if admins else guard.create_seat(_actor(), "admin", "", "admin")
    issued = guard.issue_key(_actor(), seat.id)
    path = ctx.data_dir / "admin.key"
    atomic_write(path, (issued.secret + "\n").encode(), mode=0o600)
    print(f"new API key for admin seat {seat.name!r} written to {path} (mode 0600)")
    return 0


def cmd_ack_clock(ctx: Context) -> int:
    st = ctx.guard().acknowledge_clock(_actor())
    print(f"clock acknowledged; trusted time is now {_when(st.trusted_time)}")
    return 0


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="appliance-license",
        description="Offline licence activation (box) and licence issuing (vendor).",
    )
    p.add_argument("--data-dir", help="box data directory (default: $APPLIANCE_DATA_DIR or ./data)")
    p.add_argument(
        "--clock-tolerance-hours", type=int, dest="tolerance_hours",
        default=_env_int("APPLIANCE_CLOCK_TOLERANCE_HOURS", 24),
        help="how far the clock may go back before inference locks (default: "
        "$APPLIANCE_CLOCK_TOLERANCE_HOURS or 24)",
    )  # fmt: skip
    p.add_argument("-v", "--verbose", action="store_true", help="log to stderr")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("request", help="write this box's activation request (to stdout)")
    s.add_argument("--out", help="write to FILE instead of stdout")
    s.set_defaults(func=cmd_request)

    s = sub.add_parser("issue", help="vendor: sign a licence for an activation request")
    s.add_argument("--request", required=True, help="activation request JSON from the box")
    s.add_argument("--key", required=True, help="vendor private key (PEM)")
    s.add_argument("--customer", required=True)
    s.add_argument("--seats", type=int, required=True)
    s.add_argument("--days", type=int, required=True)
    s.add_argument("--models", default="*", help="comma-separated model names or globs")
    s.add_argument("--features", default="*", help="comma-separated features, or *")
    s.add_argument("--grace-days", type=int, default=14)
    s.add_argument("--licence-id", help="default: random lic-<hex>")
    s.add_argument("--out", help="write to FILE instead of stdout")
    s.set_defaults(func=cmd_issue)

    s = sub.add_parser("keygen", help="vendor: create a signing key pair")
    s.add_argument("--out", required=True, help="directory for <kid>.pem and <kid>.pub")
    s.set_defaults(func=cmd_keygen)

    s = sub.add_parser("inspect", help="show a licence, request or receipt and check it")
    s.add_argument("file")
    s.set_defaults(func=cmd_inspect)

    s = sub.add_parser("import", help="verify and install an activation file")
    s.add_argument("file")
    s.set_defaults(func=cmd_import)

    s = sub.add_parser("status", help="licence, seats, expiry, grace, fingerprint, clock")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("deactivate", help="remove the licence and print a signed receipt")
    s.add_argument("--yes", action="store_true", help="confirm")
    s.add_argument("--out", help="write the receipt to FILE instead of stdout")
    s.set_defaults(func=cmd_deactivate)

    s = sub.add_parser("admin-key", help="recovery: write a new admin API key to admin.key")
    s.add_argument("--seat", help="admin seat name (default: the first admin seat)")
    s.set_defaults(func=cmd_admin_key)

    s = sub.add_parser("ack-clock", help="admin: accept the current clock and unlock inference")
    s.set_defaults(func=cmd_ack_clock)
    return p


def main(
    argv: Sequence[str] | None = None,
    *,
    trusted_keys: Mapping[str, bytes] | None = None,
    facts: Callable[[], Mapping[str, str]] = collect_facts,
    clock: Callable[[], float] = time.time,
) -> int:
    """Entry point; ``trusted_keys``/``facts``/``clock`` are injection points for tests."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.ERROR, stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )  # fmt: skip
    try:
        return int(args.func(Context(args, trusted_keys, facts, clock)))
    except LicenseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (OSError, sqlite3.Error) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # last resort: one line, details only with --verbose
        log.debug("unexpected error", exc_info=True)
        print(f"error: unexpected {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

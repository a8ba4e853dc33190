"""``appliance fleet add-remote / remove-remote / remotes``: the box's cloud overflow
endpoints, managed through the running box's admin API (``/admin/remotes``).

The key file is read here and sent once to the box over its API (loopback by default),
which stores it 0600; it is never printed. Plain Python; no Ray.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from appliance.remotes import MAX_KEY_BYTES
from appliance.settings import Settings
from fleet.boxapi import base_url, call
from fleet.errors import FleetError


def add_parsers(fsub: Any) -> None:
    """Register the three actions on ``appliance fleet``."""
    a = fsub.add_parser("add-remote", help="let saturated requests of seats whose egress "
                                           "policy allows it overflow to a remote endpoint")
    a.add_argument("name", help="the remote's name (in usage rows and X-Appliance-Node)")
    a.add_argument("url", help="its OpenAI base URL, e.g. https://cloud.example/v1")
    a.add_argument("--key-file", type=Path, required=True,
                   help="file holding the remote's API key (stored 0600 on the box)")
    a.add_argument("--models", default="*",
                   help="models it serves: NAME or NAME=ITS_NAME, comma-separated "
                        "(default '*': every model, same names)")
    a.add_argument("--replace", action="store_true", help="replace a remote of that name")
    r = fsub.add_parser("remove-remote", help="forget a remote endpoint and its key")
    r.add_argument("name")
    ls = fsub.add_parser("remotes", help="list the remote endpoints")
    for p in (a, r, ls):
        p.add_argument("--api", help="the box's API (default: http://HOST:PORT from the "
                                     "config); the admin key is read from data_dir/admin.key")


def read_key_file(path: Path) -> str:
    """The key in ``path``; FleetError naming what is wrong with the file."""
    try:
        data = path.read_bytes()[:MAX_KEY_BYTES + 1]
    except FileNotFoundError as exc:
        raise FleetError(f"key file {path} does not exist") from exc
    except IsADirectoryError as exc:
        raise FleetError(f"key file {path} is a directory, not a file") from exc
    except OSError as exc:
        raise FleetError(f"cannot read key file {path}: {exc.strerror}") from exc
    try:
        key = data.decode().strip()
    except UnicodeDecodeError as exc:
        raise FleetError(f"key file {path} is not text") from exc
    if not key:
        raise FleetError(f"key file {path} is empty")
    if len(data) > MAX_KEY_BYTES or len(key.splitlines()) != 1:
        raise FleetError(f"key file {path} must hold the key on one line "
                         f"(at most {MAX_KEY_BYTES} bytes)")
    return key


def run(args: argparse.Namespace, settings: Settings, echo: Any) -> int:
    api = base_url(settings, args.api)
    if args.action == "add-remote":
        key = read_key_file(args.key_file)  # before anything is sent
        remote = call(settings, api, "POST", "/admin/remotes",
                       json={"name": args.name, "url": args.url, "key": key,
                             "models": args.models, "replace": args.replace})
        models = remote["models"]
        echo(f"remote {remote['name']} ({remote['url']}) serves "
             f"{'every model' if models == '*' else ', '.join(models)}; requests overflow "
             "to it only for seats whose egress policy allows it (PATCH /admin/seats/ID "
             "{\"egress\": \"llm\"})")
        return 0
    if args.action == "remove-remote":
        call(settings, api, "DELETE", f"/admin/remotes/{args.name}")
        echo(f"remote {args.name} removed")
        return 0
    remotes = call(settings, api, "GET", "/admin/remotes")
    if not remotes:
        echo("no remote endpoints; requests never leave this box")
    for r in remotes:
        models = r["models"] if r["models"] == "*" else ", ".join(
            k if k == v else f"{k}={v}" for k, v in r["models"].items())
        echo(f"{r['name']}\t{r['url']}\tmodels: {models}")
    return 0

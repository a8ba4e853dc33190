"""Start the box for tests, trusting vendor keys the tests generated.

Product code takes extra trusted keys only as a ``create_app`` argument; this launcher
reads them from ``TEST_TRUSTED_KEYS_FILE`` (JSON: key id -> base64 public key).
"""

from __future__ import annotations

import argparse
import json
import os

import uvicorn

from appliance.app import create_app
from appliance.cli import SERVER_IMPL
from appliance.settings import load_settings
from licensing.crypto import load_public_keys


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    settings = load_settings(port=args.port)
    keys = None
    if path := os.environ.get("TEST_TRUSTED_KEYS_FILE"):
        with open(path) as fh:
            keys = load_public_keys(json.load(fh))
    uvicorn.run(create_app(settings, trusted_keys=keys), host="127.0.0.1", port=args.port,
                log_level="warning", access_log=False, **SERVER_IMPL)


if __name__ == "__main__":
    main()

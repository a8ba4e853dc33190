"""`appliance-update`: firmware's update command with the box's model store plugged in.

The firmware layer stays free of the appliance; this is the one place the two meet for the
command line (the admin API does the same in ``api/admin_updates.py``).
"""

from __future__ import annotations

from appliance.modelstore import ModelStorePacks
from firmware import cli


def main(argv: list[str] | None = None) -> int:
    return cli.main(argv, packs=ModelStorePacks)


if __name__ == "__main__":
    raise SystemExit(main())

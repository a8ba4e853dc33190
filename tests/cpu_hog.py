"""Run a command while every core is kept busy: the suite must hold on a loaded machine.

    python -m tests.cpu_hog [--hogs N] -- COMMAND...

Starts N busy-looping processes (default: one per core) at normal priority, runs COMMAND,
stops the hogs, and exits with COMMAND's status. `make test-busy` runs the suite this way.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

HOGS_ENV = "APPLIANCE_TEST_CPU_HOGS"  # tells a test its machine is kept busy on purpose


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hogs", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("give the command to run after --")
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range(args.hogs)]
    print(f"cpu_hog: {len(hogs)} busy processes while running {' '.join(command)}",
          flush=True)
    try:
        env = {**os.environ, HOGS_ENV: str(len(hogs))}
        return subprocess.call(command, env=env)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


if __name__ == "__main__":
    sys.exit(main())

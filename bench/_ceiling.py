"""llama.cpp's own tools as baselines: ``llama-batched-bench`` (the batched-decode ceiling)
and ``llama-server`` (the peer a customer would install instead of the box).

Built on first use from the llama.cpp sources vendored in the llama-cpp-python sdist we
pin, with the same portable CPU flags as the box's build (``GGML_NATIVE=OFF``), so the
kernels match the library the engine runs on; CPU only, cached in ``bench/.build``. Not
used by the tests.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

VERSION = "0.3.36"
BUILD = Path(__file__).resolve().parent / ".build"
SDIST = BUILD / f"llama_cpp_python-{VERSION}.tar.gz"
SOURCE = BUILD / f"llama_cpp_python-{VERSION}" / "vendor" / "llama.cpp"
CMAKE_DIR = BUILD / "cmake-build"
BINARY = CMAKE_DIR / "bin" / "llama-batched-bench"
SERVER = CMAKE_DIR / "bin" / "llama-server"


@dataclass(frozen=True)
class CeilingRow:
    """One line of llama-batched-bench output (``pl`` sequences at once)."""

    pl: int
    pp: int
    tg: int
    speed_pp: float  # prompt tokens/s
    speed_tg: float  # aggregate decode tokens/s across the pl sequences
    seconds: float = 0.0  # the whole run: every prompt read, every token generated

    @property
    def e2e(self) -> float:
        """Generated tokens per second over the whole run, prompts included."""
        return self.pl * self.tg / self.seconds if self.seconds else float("nan")


def _run(cmd: list[str], log_file: Path) -> None:
    with log_file.open("ab") as out:
        subprocess.run(cmd, check=True, stdout=out, stderr=subprocess.STDOUT)


def ensure_binary(target: str = "llama-batched-bench") -> Path:
    """Download the sdist, configure and build ``target`` unless cached."""
    binary = CMAKE_DIR / "bin" / target
    if binary.is_file():
        return binary
    BUILD.mkdir(parents=True, exist_ok=True)
    build_log = BUILD / "build.log"
    if not SDIST.is_file():
        log.warning("downloading the llama-cpp-python %s sdist", VERSION)
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
              f"llama-cpp-python=={VERSION}", "-d", str(BUILD)], build_log)
    if not SOURCE.is_dir():
        with tarfile.open(SDIST) as tar:
            tar.extractall(BUILD, filter="data")
    if shutil.which("cmake") is None:
        raise RuntimeError("cmake is needed to build llama-batched-bench")
    log.warning("building %s (CPU) in %s; log in %s", target, CMAKE_DIR, build_log)
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    _run(["cmake", "-S", str(SOURCE), "-B", str(CMAKE_DIR), *generator,
          "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF", "-DGGML_CUDA=OFF",
          "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
          "-DLLAMA_BUILD_SERVER=ON", "-DGGML_NATIVE=OFF"], build_log)
    _run(["cmake", "--build", str(CMAKE_DIR), "--target", target, "-j2"], build_log)
    return binary


def measure(model: Path, *, levels: list[int], threads: int, pp: int, tg: int,
            n_ctx: int) -> list[CeilingRow]:
    """Run llama-batched-bench once over ``levels`` and return its rows."""
    binary = ensure_binary()
    cmd = [str(binary), "-m", str(model), "-c", str(n_ctx), "-b", "512", "-ub", "512",
           "-npp", str(pp), "-ntg", str(tg), "-npl", ",".join(map(str, levels)),
           "-t", str(threads), "-ngl", "0", "--output-format", "jsonl"]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    rows = []
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            d = json.loads(line)
            rows.append(CeilingRow(d["pl"], d["pp"], d["tg"], d["speed_pp"], d["speed_tg"],
                                   d.get("t", 0.0)))
    if not rows:
        raise RuntimeError(f"llama-batched-bench printed no results: {done.stderr[-2000:]}")
    return rows

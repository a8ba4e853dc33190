"""What a worker process builds: the engine kind, its parameters and the configurations
it may run in, fastest first. Plain, picklable data; nothing here imports a native library.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import platform
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

Kind = Literal["llm", "vision"]

#: Environment switch for tests: a worker whose self-test runs in a configuration that is
#: not a fallback kills itself with SIGSEGV, as a CPU fault in native code would.
CRASH_SELFTEST_ENV = "APPLIANCE_TEST_CRASH_SELFTEST"
NICE_ENV = "APPLIANCE_WORKER_NICE"  # how much nicer than the API process a worker runs


@dataclass(frozen=True)
class Config:
    """One way to run an engine. ``options`` go to the engine factory in the worker."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    why: str = ""  # what this configuration gives up, said when it is chosen as a fallback


@dataclass(frozen=True)
class EngineSpec:
    """An engine to build in a worker.

    ``params`` are the factory's keyword arguments (plain values); ``identity`` names the
    exact model files (their sha256) and the box's release, so a new model or release is
    self-tested again; ``configs`` are tried in order when one crashes its worker.
    """

    kind: Kind
    name: str
    params: dict[str, Any]
    identity: str
    configs: tuple[Config, ...]

    def trust_key(self) -> str:
        """Key of the remembered configuration: this CPU, the native library, the model."""
        blob = json.dumps({"cpu": cpu_signature(), "lib": library_version(self.kind),
                           "kind": self.kind, "model": self.identity}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:32]


LLAMA_CONFIGS = (
    Config("default"),
    Config("safe", {"use_extra_bufts": False},
           "weights are not repacked into llama.cpp's extra buffer types (AMX, AVX-512 "
           "repack); decoding may be slower"),
)


def vision_configs(override: list[str] | None) -> tuple[Config, ...]:
    """The provider chain, then each shorter tail of it (the next provider down)."""
    chain = override or ["tensorrt", "cuda", "cpu"]
    out = [Config("auto" if override is None else ",".join(chain),
                  {} if override is None else {"providers": list(chain)})]
    for i in range(1, len(chain)):
        tail = chain[i:]
        out.append(Config(",".join(tail), {"providers": list(tail)},
                          f"{chain[i - 1]} is skipped on this box"))
    return tuple(out)


def cpu_signature() -> str:
    """CPU model and feature flags (Linux /proc/cpuinfo; the platform string elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            text = f.read(1 << 20)
    except OSError:
        return platform.processor() or platform.machine()
    model = flags = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = " ".join(sorted(value.split()))
        if model and flags:
            break
    return f"{platform.machine()} {model} [{flags}]"


def library_version(kind: Kind) -> str:
    """Version and build of the native library an engine of ``kind`` uses, read from
    package metadata and the shared libraries' sizes (never by loading them): a portable
    and a native build of the same version are different libraries to trust."""
    package = "onnxruntime" if kind == "vision" else "llama-cpp-python"
    module = "onnxruntime" if kind == "vision" else "llama_cpp"
    for name in (package, "onnxruntime-gpu") if kind == "vision" else (package,):
        try:
            return f"{name} {metadata.version(name)} {_build_signature(module)}"
        except metadata.PackageNotFoundError:
            continue
    return f"{package} unknown"


def _build_signature(module: str) -> str:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return ""
    libs = []
    for root in spec.submodule_search_locations:
        for lib in sorted(Path(root).rglob("*.so*")):
            with contextlib.suppress(OSError):
                libs.append(f"{lib.name}:{lib.stat().st_size}")
    return hashlib.sha256(",".join(libs).encode()).hexdigest()[:12]

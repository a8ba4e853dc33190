"""Dependency direction, checked in fresh interpreters so nothing is pre-imported."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {
    # The bottom layer: files and the database, imported by every package, importing none.
    "storage": ("fastapi", "starlette", "textual", "appliance", "engines", "licensing",
                "firmware", "tui", "fleet", "llama_cpp", "onnxruntime", "ray"),
    "engines": ("fastapi", "starlette", "textual", "appliance", "tui"),
    "licensing": ("fastapi", "starlette", "textual", "appliance", "tui", "engines"),
    "firmware": ("fastapi", "starlette", "textual", "tui", "engines"),
    "tui": ("engines", "llama_cpp", "onnxruntime", "sqlite_utils"),
    # The API process never loads a native inference library: engines run in workers.
    "appliance": ("llama_cpp", "onnxruntime", "tensorrt", "textual", "tui", "ray"),
    # Fleet mode is an extra: only fleet/ imports Ray, and only its Ray-side modules.
    "fleet": ("textual", "tui", "llama_cpp", "onnxruntime"),
}
for _package in ("engines", "licensing", "firmware", "tui"):
    FORBIDDEN[_package] = (*FORBIDDEN[_package], "ray")
#: fleet modules that must import without Ray (the CLI refuses a join on a box without it)
FLEET_WITHOUT_RAY = ("fleet.errors", "fleet.token", "fleet.node", "fleet.wire",
                     "fleet.headers", "fleet.app", "fleet.cli", "fleet.admission",
                     "fleet.prefix", "fleet.load", "fleet.remotes", "fleet.boxapi")


def _modules(package: str) -> list[str]:
    out = []
    for path in sorted((ROOT / package).rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out.append(".".join(parts))
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_does_not_import_forbidden(package: str) -> None:
    modules = _modules(package)
    if package == "fleet" and importlib.util.find_spec("ray") is None:
        modules = list(FLEET_WITHOUT_RAY)  # a box without the fleet extra
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        f"bad = sorted(n for n in sys.modules if n.split('.')[0] in {FORBIDDEN[package]!r})\n"
        "print(','.join(bad))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "", f"{package} imports {proc.stdout.strip()}"


def test_fleet_plain_modules_do_not_import_ray() -> None:
    code = (
        "import importlib, sys\n"
        f"for m in {FLEET_WITHOUT_RAY!r}:\n"
        "    importlib.import_module(m)\n"
        "print(','.join(sorted(n for n in sys.modules if n.split('.')[0] == 'ray')))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "", f"fleet imports {proc.stdout.strip()} without need"


def _imported_roots(path: Path) -> set[str]:
    """Top-level names of every import statement in ``path``, function-local ones too."""
    import ast

    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


STATIC_FORBIDDEN = {**FORBIDDEN, "firmware": (*FORBIDDEN["firmware"], "appliance")}
# `appliance doctor` probes the native libraries in its own CLI process, never in the box's.
ALLOWED = {"appliance/doctor.py": {"llama_cpp", "onnxruntime"}}


@pytest.mark.parametrize("package", sorted(STATIC_FORBIDDEN))
def test_no_import_statement_crosses_a_layer(package: str) -> None:
    """Every ``import`` in the package's source, including those inside functions that an
    import-time check never runs (the firmware layer once imported the model store there)."""
    bad = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        hits = _imported_roots(path) & set(STATIC_FORBIDDEN[package]) - ALLOWED.get(rel, set())
        if hits:
            bad[rel] = sorted(hits)
    assert not bad, f"{package} imports across its layer: {bad}"

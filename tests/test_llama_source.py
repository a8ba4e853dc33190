"""The llama.cpp source patch (``tools/llama_source.py``): pure text edits, checked."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from tools import llama_source

PINNED = """    const bool use_split_kv_path = !use_ref && (neq1 == 1 && neq3 == 1) && nek1 >= 512;
        bool use_tiled = !use_ref &&
                               (q->type == GGML_TYPE_F32 && neq1 >= Q_TILE_SZ);
"""


def test_both_kernels_are_turned_off_once_and_a_second_run_changes_nothing() -> None:
    out = llama_source.patch_text(PINNED)
    assert "use_split_kv_path = false && !use_ref" in out
    assert "use_tiled = false && !use_ref" in out
    assert llama_source.patch_text(out) == out


@pytest.mark.parametrize("source", [
    PINNED.replace("bool use_tiled = !use_ref &&", "bool use_tiled = true;"),  # changed
    PINNED + PINNED,  # twice: not the file we know
])
def test_a_source_that_is_not_the_pinned_one_is_refused(source: str) -> None:
    with pytest.raises(ValueError, match="not the pinned source"):
        llama_source.patch_text(source)


def test_an_sdist_with_another_digest_is_refused_before_unpacking(tmp_path: Path) -> None:
    sdist = tmp_path / "llama_cpp_python-0.3.36.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        data = PINNED.encode()
        info = tarfile.TarInfo(f"llama_cpp_python-0.3.36/{llama_source.OPS}")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ValueError, match="sha256"):
        llama_source.prepare(sdist, tmp_path / "src")
    assert not (tmp_path / "src").exists()

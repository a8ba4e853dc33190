"""Unpack the pinned llama-cpp-python sdist and make llama.cpp's CPU flash attention
compute every query row the same way, whatever the batch holds. Run by ``make`` before it
builds the wheel; the standard library only (it runs before the venv has anything).

Why: ggml's CPU flash attention (``ggml_compute_forward_flash_attn_ext_f16`` in
``ggml/src/ggml-cpu/ops.cpp``) picks one of three kernels by the shape of the micro-batch:

- a tiled kernel when one sequence has 64 or more query rows in it;
- a split-KV kernel (partial sums per thread, then a reduction) when the micro-batch is a
  single token of a single sequence and its KV view holds 512 cells or more;
- otherwise a per-row kernel, whose result for a row depends only on that row and the
  cells it attends to.

The first two sum in another order, so a token's logits (and the KV cells later tokens
read) change in their last bits with what shares the step: measured with SmolLM2, a
request decoding alone past 256 tokens of context gets logits up to 0.9 apart from the
same request decoding beside another one, and a 64-token prompt chunk read alone differs
from the same chunk read as 1 + 63 tokens beside other requests' decodes. Greedy output
then differs from the request served alone (seen on a 486-token prompt). With both turned
off every row takes the per-row kernel (what ggml's own ``use_ref`` mode does for this op),
so the engine's output does not depend on batching or on where a reused prefix ends.
Measured cost on 2 cores (SmolLM2, f16 cells): a 1,024-token prompt read alone in 64-token
chunks 4.5 s instead of 3.7 s (the tiled kernel's gain; beside other requests' decodes a
chunk was already split into 1 + 63 rows and read per row); a request decoding alone at
700 tokens of context 14.3 instead of 13.4 ms per token; a step decoding 8 requests
39.5 against 39.3 ms (no change).

    python tools/llama_source.py SDIST DEST   -> prints the patched source directory
"""

from __future__ import annotations

import hashlib
import sys
import tarfile
from pathlib import Path

VERSION = "0.3.36"
#: sha256 of llama_cpp_python-0.3.36.tar.gz as published on PyPI
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
OPS = Path("vendor/llama.cpp/ggml/src/ggml-cpu/ops.cpp")
#: (what the pinned source says, what it becomes); each must occur exactly once
EDITS = (
    ("const bool use_split_kv_path = !use_ref && (neq1 == 1",
     "const bool use_split_kv_path = false && !use_ref && (neq1 == 1"),
    ("bool use_tiled = !use_ref &&", "bool use_tiled = false && !use_ref &&"),
)
MARK = "// appliance: per-row flash attention only (tools/llama_source.py)\n"


def patch_text(text: str) -> str:
    """``ops.cpp`` with the edits applied; ValueError when the source is not the pinned one."""
    if text.startswith(MARK):
        return text
    for old, new in EDITS:
        if text.count(old) != 1:
            raise ValueError(f"expected exactly one {old!r} in {OPS}: not the pinned source")
        text = text.replace(old, new)
    return MARK + text


def prepare(sdist: Path, dest: Path) -> Path:
    """Check ``sdist`` against the pin, unpack it under ``dest`` and patch it."""
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        raise ValueError(f"{sdist} has sha256 {digest}, expected {SDIST_SHA256}")
    with tarfile.open(sdist) as tar:
        tar.extractall(dest, filter="data")
    root = dest / f"llama_cpp_python-{VERSION}"
    ops = root / OPS
    ops.write_text(patch_text(ops.read_text()))
    return root


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: llama_source.py SDIST DEST")
    print(prepare(Path(sys.argv[1]), Path(sys.argv[2])))

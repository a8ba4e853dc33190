"""A test projector for SmolLM2: a three-colour "vision-language model" built here.

No small vision-language model ships inside a package this project can install, so the
image path is tested with a projector (an ``mmproj`` GGUF of llama.cpp's LLaVA ``mlp``
type) whose weights this module writes by hand: the patch embedding averages each colour
channel over a patch, and the two-layer projector maps a patch that is mostly red, green
or blue to the SmolLM2 input embedding of the word " red", " green" or " blue" (read from
the model file itself). Every other patch becomes a zero vector. It is not a trained
model: it sees nothing but those three colours, which is enough to show that an image
travels from the request through libmtmd into the model and changes its answer.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import gguf
import numpy as np
from gguf.quants import dequantize

IMAGE_SIZE = 48
PATCH = 16  # 3 x 3 patches: nine image tokens
WIDTH = 8  # the "vision encoder"'s width (channels 0-2 carry the colour means)
COLOURS = ("red", "green", "blue")
SHARPNESS = 20.0  # how decisively a patch counts as one colour


def _embeddings(llm: Path) -> tuple[np.ndarray, list[str]]:
    reader = gguf.GGUFReader(llm)
    table = next(t for t in reader.tensors if t.name == "token_embd.weight")
    field = reader.fields["tokenizer.ggml.tokens"]
    vocab = [bytes(field.parts[i]).decode("utf-8", "replace") for i in field.data]
    return dequantize(table.data, table.tensor_type), vocab


def write_projector(llm: Path, out: Path) -> Path:
    """Write the colour projector for the GGUF language model ``llm`` to ``out``."""
    table, vocab = _embeddings(llm)
    n_embd = table.shape[1]
    rows = [table[vocab.index("\u0120" + c)] for c in COLOURS]  # GPT-2 BPE: "Ġred"
    w = gguf.GGUFWriter(str(out), "clip")
    w.add_string("clip.projector_type", "mlp")
    w.add_bool("clip.has_vision_encoder", True)
    w.add_uint32("clip.vision.image_size", IMAGE_SIZE)
    w.add_uint32("clip.vision.patch_size", PATCH)
    w.add_uint32("clip.vision.embedding_length", WIDTH)
    w.add_uint32("clip.vision.feed_forward_length", WIDTH)
    w.add_uint32("clip.vision.block_count", 1)  # llava reads up to the last-but-one: none
    w.add_uint32("clip.vision.projection_dim", n_embd)
    w.add_uint32("clip.vision.attention.head_count", 1)
    w.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-6)
    w.add_array("clip.vision.image_mean", [0.0, 0.0, 0.0])
    w.add_array("clip.vision.image_std", [1.0, 1.0, 1.0])
    n_patches = (IMAGE_SIZE // PATCH) ** 2
    conv = np.zeros((WIDTH, 3, PATCH, PATCH), np.float32)  # ggml ne: [p, p, 3, width]
    for c in range(3):
        conv[c, c] = 1.0 / (PATCH * PATCH)  # channel c: the patch's mean of colour c
    w.add_tensor("v.patch_embd.weight", conv)
    w.add_tensor("v.position_embd.weight", np.zeros((n_patches, WIDTH), np.float32))
    eye = np.eye(WIDTH, dtype=np.float32)
    w.add_tensor("v.blk.0.attn_out.weight", eye)  # layer 0 is loaded, never run
    w.add_tensor("v.blk.0.ffn_up.weight", eye)
    w.add_tensor("v.blk.0.ffn_down.weight", eye)
    # hidden unit c: positive only when colour c beats the other two by half the range
    up = np.zeros((3, WIDTH), np.float32)
    for c in range(3):
        up[c, :3] = -SHARPNESS
        up[c, c] = SHARPNESS
    w.add_tensor("mm.0.weight", up)
    w.add_tensor("mm.0.bias", np.full(3, -SHARPNESS / 2, np.float32))
    # GELU(SHARPNESS / 2) is SHARPNESS / 2: scale back to the word's embedding
    down = np.stack(rows, axis=1).astype(np.float32) / (SHARPNESS / 2)  # (n_embd, 3)
    w.add_tensor("mm.2.weight", down)
    w.add_tensor("mm.2.bias", np.zeros(n_embd, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_pack(llm: Path, directory: Path, name: str = "smollm2-colour-vlm") -> Path:
    """A model pack: ``llm`` (hard-linked) with the colour projector, role ``projector``."""
    pack = directory / name
    pack.mkdir(parents=True, exist_ok=True)
    weights = pack / llm.name
    if not weights.exists():
        try:
            weights.hardlink_to(llm)
        except OSError:
            weights.write_bytes(llm.read_bytes())
    projector = write_projector(llm, pack / "mmproj-colour.gguf")
    files = [{"path": p.name, "sha256": _sha256(p), "size": p.stat().st_size, "role": role}
             for p, role in ((weights, "weights"), (projector, "projector"))]
    manifest = {"name": name, "engine": "llama", "format": "gguf", "quantisation": "Q4_1",
                "licence": "Apache-2.0 (SmolLM2); projector written by the tests",
                "files": files}
    (pack / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return pack

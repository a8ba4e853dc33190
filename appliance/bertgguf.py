"""Convert a BERT sentence-embedding model (safetensors + tokenizer.json) into a GGUF file
for llama.cpp's ``bert`` architecture, with numpy and the ``gguf`` package only.

llama.cpp's own converter needs torch and transformers; this one knows a single
architecture (``BertModel`` with a WordPiece tokenizer, as sentence-transformers ships
it) and refuses anything else by name. What llama.cpp's BERT loader reads:

- ``bert.*`` hyper-parameters (context, width, layers, heads, layer-norm epsilon), causal
  attention off, and the pooling the model was trained with (sentence-transformers'
  ``1_Pooling/config.json``);
- tensors named as in llama.cpp's ``llama-arch.cpp`` (``token_embd``, ``position_embd``,
  ``token_types``, ``token_embd_norm``, ``blk.N.attn_q`` ...); matrices in F16, vectors,
  norms and the position and token-type tables in F32, as llama.cpp's converter stores them;
- a ``bert`` (WordPiece) vocabulary in llama.cpp's form: word-start pieces get a leading
  U+2581 and continuation pieces lose their ``##``, control tokens are kept as they are;
  the special ids ([CLS] as BOS, [SEP], [UNK], [PAD], [MASK]) and the BertNormalizer's
  lower-casing and accent stripping.

The output depends only on the input bytes (no timestamps, fixed key and tensor order), so
its sha256 can be pinned.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np

from appliance.errors import ModelStoreError

#: safetensors dtype names -> numpy dtypes (little-endian)
_DTYPES = {"F32": "<f4", "F16": "<f2", "I64": "<i8"}
_MAX_HEADER = 16 << 20
_TOKEN_NORMAL, _TOKEN_CONTROL = 1, 3
_POOLING = {"mean": 1, "cls": 2}  # llama.cpp's enum llama_pooling_type
_FILE_TYPE_F16 = 1  # LLAMA_FTYPE_MOSTLY_F16
_SKIP = {"embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"}
_TOP = {
    "embeddings.word_embeddings.weight": "token_embd.weight",
    "embeddings.position_embeddings.weight": "position_embd.weight",
    "embeddings.token_type_embeddings.weight": "token_types.weight",
    "embeddings.LayerNorm.weight": "token_embd_norm.weight",
    "embeddings.LayerNorm.bias": "token_embd_norm.bias",
}
_LAYER = {
    "attention.self.query": "attn_q",
    "attention.self.key": "attn_k",
    "attention.self.value": "attn_v",
    "attention.output.dense": "attn_output",
    "attention.output.LayerNorm": "attn_output_norm",
    "intermediate.dense": "ffn_up",
    "output.dense": "ffn_down",
    "output.LayerNorm": "layer_output_norm",
}
_LAYER_RE = re.compile(r"^encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$")
#: kept in F32 although they are matrices (llama.cpp's converter does the same)
_F32_TABLES = {"position_embd.weight", "token_types.weight"}


class ConversionError(ModelStoreError):
    """The source model is not one this converter knows how to convert."""


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a safetensors file, memory-mapped read-only."""
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    if raw.size < 8:
        raise ConversionError(f"{path.name} is too short to be a safetensors file")
    (n,) = struct.unpack("<Q", raw[:8].tobytes())
    if n > min(_MAX_HEADER, raw.size - 8):
        raise ConversionError(f"{path.name}: header length {n} is out of bounds")
    try:
        header = json.loads(raw[8:8 + n].tobytes())
    except ValueError as exc:
        raise ConversionError(f"{path.name}: header is not JSON: {exc}") from exc
    base = 8 + n
    out = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        dtype = _DTYPES.get(spec.get("dtype"))
        if dtype is None:
            raise ConversionError(f"{path.name}: tensor {name} has dtype {spec.get('dtype')}")
        start, end = spec["data_offsets"]
        shape = tuple(int(d) for d in spec["shape"])
        count = int(np.prod(shape, dtype=np.int64))
        size = count * np.dtype(dtype).itemsize
        if not 0 <= start <= end <= raw.size - base or end - start != size:
            raise ConversionError(f"{path.name}: tensor {name} has bad offsets")
        out[name] = raw[base + start:base + end].view(dtype).reshape(shape)
    return out


def gguf_name(name: str) -> str | None:
    """llama.cpp's name for a Hugging Face BERT tensor; None for tensors it does not use."""
    if name.startswith("bert."):
        name = name[5:]
    if name in _SKIP or name.startswith("cls."):
        return None
    if name in _TOP:
        return _TOP[name]
    m = _LAYER_RE.match(name)
    if m and m.group(2) in _LAYER:
        return f"blk.{int(m.group(1))}.{_LAYER[m.group(2)]}.{m.group(3)}"
    raise ConversionError(f"tensor {name!r} is not part of a BERT encoder this converter knows")


def wordpiece_vocab(tokenizer: dict[str, Any], vocab_size: int
                    ) -> tuple[list[str], list[int], dict[str, int], dict[str, bool]]:
    """(tokens in llama.cpp's form, token types, special ids, normaliser flags)."""
    model = tokenizer.get("model") or {}
    if model.get("type") != "WordPiece" or model.get("continuing_subword_prefix", "##") != "##":
        raise ConversionError("the tokenizer is not a WordPiece tokenizer with '##' pieces")
    if (tokenizer.get("pre_tokenizer") or {}).get("type") != "BertPreTokenizer":
        raise ConversionError("the tokenizer does not split words as BERT does")
    norm = tokenizer.get("normalizer") or {}
    if norm.get("type") != "BertNormalizer":
        raise ConversionError("the tokenizer's normaliser is not BertNormalizer")
    vocab: dict[str, int] = model.get("vocab") or {}
    by_id = {i: t for t, i in vocab.items()}
    if len(by_id) != vocab_size or set(by_id) != set(range(vocab_size)):
        raise ConversionError(f"the vocabulary does not hold ids 0..{vocab_size - 1} once each")
    control = {t["id"] for t in tokenizer.get("added_tokens", ()) if t.get("special")}
    tokens, types = [], []
    for i in range(vocab_size):
        tok = by_id[i]
        if i in control:
            tokens.append(tok)
            types.append(_TOKEN_CONTROL)
        else:
            tokens.append(tok[2:] if tok.startswith("##") else "\u2581" + tok)
            types.append(_TOKEN_NORMAL)
    if len(set(tokens)) != len(tokens):
        raise ConversionError("two vocabulary entries collide in llama.cpp's form")

    def special(text: str) -> int:
        if text not in vocab:
            raise ConversionError(f"the vocabulary has no {text} token")
        return vocab[text]

    template = [next(iter(p.values()))["id"]
                for p in (tokenizer.get("post_processor") or {}).get("single", ())]
    if template != ["[CLS]", "A", "[SEP]"]:
        raise ConversionError(f"inputs are framed as {template}, not [CLS] A [SEP]")
    ids = {"bos": special("[CLS]"), "cls": special("[CLS]"), "seperator": special("[SEP]"),
           "eos": special("[SEP]"), "unknown": special("[UNK]"), "padding": special("[PAD]"),
           "mask": special("[MASK]")}
    lowercase = bool(norm.get("lowercase", True))
    strip = norm.get("strip_accents")
    flags = {"lowercase": lowercase, "strip_accents": lowercase if strip is None else bool(strip)}
    return tokens, types, ids, flags


def _pooling(pooling_config: dict[str, Any] | None) -> int:
    cfg = pooling_config or {}
    if cfg.get("pooling_mode_mean_tokens"):
        return _POOLING["mean"]
    if cfg.get("pooling_mode_cls_token"):
        return _POOLING["cls"]
    raise ConversionError("the model's pooling is neither mean nor CLS")


def convert(source: Path, out: Path, name: str) -> None:
    """Write ``out`` (GGUF) from the model files in ``source``: ``config.json``,
    ``tokenizer.json``, ``model.safetensors`` and ``1_Pooling/config.json``."""
    import gguf

    def load(rel: str) -> Any:
        try:
            return json.loads((source / rel).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConversionError(f"cannot read {rel}: {exc}") from exc

    cfg = load("config.json")
    positions = cfg.get("position_embedding_type", "absolute")
    if cfg.get("model_type") != "bert" or positions != "absolute":
        raise ConversionError("only BERT models with absolute positions can be converted")
    if cfg.get("hidden_act") != "gelu":
        raise ConversionError(f"activation {cfg.get('hidden_act')!r} is not gelu")
    tokens, types, ids, flags = wordpiece_vocab(load("tokenizer.json"), int(cfg["vocab_size"]))
    pooling = _pooling(load("1_Pooling/config.json"))
    tensors = read_safetensors(source / "model.safetensors")

    w = gguf.GGUFWriter(out, "bert")
    w.add_name(name)
    w.add_context_length(int(cfg["max_position_embeddings"]))
    w.add_embedding_length(int(cfg["hidden_size"]))
    w.add_feed_forward_length(int(cfg["intermediate_size"]))
    w.add_block_count(int(cfg["num_hidden_layers"]))
    w.add_head_count(int(cfg["num_attention_heads"]))
    w.add_layer_norm_eps(float(cfg["layer_norm_eps"]))
    w.add_causal_attention(False)
    w.add_pooling_type(gguf.PoolingType(pooling))
    w.add_file_type(_FILE_TYPE_F16)
    w.add_token_type_count(int(cfg.get("type_vocab_size", 2)))
    w.add_tokenizer_model("bert")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    for key, value in ids.items():
        w.add_uint32(f"tokenizer.ggml.{key}_token_id", value)
    w.add_bool("tokenizer.ggml.normalizer.lowercase", flags["lowercase"])
    w.add_bool("tokenizer.ggml.normalizer.strip_accents", flags["strip_accents"])

    layers = int(cfg["num_hidden_layers"])
    written = set()
    for hf_name in sorted(tensors, key=_order):
        target = gguf_name(hf_name)
        if target is None:
            continue
        data = np.asarray(tensors[hf_name], dtype=np.float32)
        if data.ndim >= 2 and target not in _F32_TABLES and not target.endswith("_norm.weight"):
            data = data.astype(np.float16)
        w.add_tensor(target, np.ascontiguousarray(data))
        written.add(target)
    wanted = set(_TOP.values()) | {f"blk.{i}.{t}.{k}" for i in range(layers)
                                   for t in _LAYER.values() for k in ("weight", "bias")}
    if missing := sorted(wanted - written):
        raise ConversionError(f"the model lacks tensors {', '.join(missing[:5])}")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _order(name: str) -> tuple[int, str]:
    """Embeddings first, then the layers in numeric order (not ``1, 10, 2``)."""
    m = _LAYER_RE.match(name.removeprefix("bert."))
    return (1 + int(m.group(1)), name) if m else (0, name)

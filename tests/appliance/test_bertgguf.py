"""The BERT converter refuses what it does not know, by name (pure parts; the real
conversion is pinned in test_modelstore and checked numerically in test_embedding)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from appliance.bertgguf import ConversionError, gguf_name, read_safetensors, wordpiece_vocab


def _tokenizer(**over: object) -> dict:
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4, "hello": 5, "##s": 6}
    tok = {"model": {"type": "WordPiece", "continuing_subword_prefix": "##", "vocab": vocab},
           "pre_tokenizer": {"type": "BertPreTokenizer"},
           "normalizer": {"type": "BertNormalizer", "lowercase": True, "strip_accents": None},
           "post_processor": {"type": "TemplateProcessing", "single": [
               {"SpecialToken": {"id": "[CLS]"}}, {"Sequence": {"id": "A"}},
               {"SpecialToken": {"id": "[SEP]"}}]},
           "added_tokens": [{"id": i, "special": True} for i in range(5)]}
    tok.update(over)
    return tok


def test_wordpiece_vocab_in_llama_cpp_form() -> None:
    tokens, types, ids, flags = wordpiece_vocab(_tokenizer(), 7)
    assert tokens == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "\u2581hello", "s"]
    assert types == [3, 3, 3, 3, 3, 1, 1]
    assert ids["bos"] == ids["cls"] == 2 and ids["seperator"] == 3 and ids["unknown"] == 1
    assert flags == {"lowercase": True, "strip_accents": True}


@pytest.mark.parametrize("over, message", [
    ({"model": {"type": "BPE"}}, "not a WordPiece"),
    ({"pre_tokenizer": {"type": "Metaspace"}}, "split words"),
    ({"normalizer": {"type": "NFC"}}, "BertNormalizer"),
    ({"post_processor": {"single": [{"Sequence": {"id": "A"}}]}}, "framed"),
])
def test_other_tokenizers_are_refused(over: dict, message: str) -> None:
    with pytest.raises(ConversionError, match=message):
        wordpiece_vocab(_tokenizer(**over), 7)


def test_tensor_names() -> None:
    assert gguf_name("bert.embeddings.word_embeddings.weight") == "token_embd.weight"
    assert gguf_name("encoder.layer.11.attention.self.query.bias") == "blk.11.attn_q.bias"
    assert gguf_name("encoder.layer.0.output.LayerNorm.weight") == "blk.0.layer_output_norm.weight"
    assert gguf_name("pooler.dense.weight") is None
    with pytest.raises(ConversionError, match="rotary"):
        gguf_name("encoder.layer.0.attention.rotary.inv_freq")


def test_safetensors_reader_checks_offsets(tmp_path: Path) -> None:
    data = np.arange(6, dtype="<f4").tobytes()

    def write(header: dict) -> Path:
        blob = json.dumps(header).encode()
        path = tmp_path / "m.safetensors"
        path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
        return path

    ok = read_safetensors(write({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}}))
    assert ok["w"].tolist() == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(ConversionError, match="bad offsets"):
        read_safetensors(write({"w": {"dtype": "F32", "shape": [4, 3], "data_offsets": [0, 48]}}))
    with pytest.raises(ConversionError, match="dtype"):
        read_safetensors(write({"w": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 6]}}))

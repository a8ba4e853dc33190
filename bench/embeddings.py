"""Retrieval quality (one run): recall@1 on the fixed set in tests/fixtures/retrieval.json, for
the all-MiniLM-L6-v2 embedding pack and for mean pooling of the SmolLM2 chat model.

In-process engines by default (llama.cpp on this machine's CPU); with --url the same
queries go through a running box's /v1/embeddings with the official openai client.

Usage: .venv/bin/python bench/embeddings.py [--models DIR] [--threads N]
       .venv/bin/python bench/embeddings.py --url http://127.0.0.1:8080/v1 --key sk-...
Needs the test model store (pytest fills .cache/test-models) or --models pointing at one.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appliance.modelstore import ModelStore  # noqa: E402
from tests.retrieval_set import recall_at_1  # noqa: E402

EMBEDDER, LLM = "all-minilm-l6-v2", "smollm2-135m-instruct"


def local(models: Path, threads: int) -> dict[str, float]:
    from engines.llm.batched import BatchedLlamaEngine
    from engines.llm.embedding import LlamaEmbeddingEngine

    store = ModelStore(models)
    out = {}
    for name, make in (
        (EMBEDDER, lambda p: LlamaEmbeddingEngine(p, n_threads=threads)),
        (LLM, lambda p: BatchedLlamaEngine(p, n_ctx=2048, slots=1, n_threads=threads)),
    ):
        engine = make(store.file_path(name))
        try:
            t = time.perf_counter()
            out[name] = recall_at_1(engine.embed)
            out[f"{name} seconds"] = round(time.perf_counter() - t, 2)
        finally:
            engine.close()
    return out


def remote(url: str, key: str) -> dict[str, float]:
    import openai

    client = openai.OpenAI(base_url=url, api_key=key, max_retries=0)

    def embed_with(model: str) -> Callable[[Sequence[str]], list[list[float]]]:
        return lambda texts: [d.embedding for d in
                              client.embeddings.create(model=model, input=list(texts)).data]

    return {name: recall_at_1(embed_with(name)) for name in (EMBEDDER, LLM)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=Path, default=ROOT / ".cache" / "test-models")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--url", help="a box's /v1 base URL (default: in-process engines)")
    ap.add_argument("--key", default="no-key")
    args = ap.parse_args()
    result = remote(args.url, args.key) if args.url else local(args.models, args.threads)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
